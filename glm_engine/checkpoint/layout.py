"""What a checkpoint file must hold for a config, TP degree and quantization, checked from metadata only.

Everything here reads shapes and dtypes (from safetensors headers or memory-mapped ``torch.load``), never tensor
data, so a 260 GB checkpoint is validated in seconds before anything heavy is loaded
(docs/glm-semantics.md#checkpoint-layout).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from glm_engine.errors import CheckpointError
from glm_engine.model.glm130b.config import PRESETS, GLMConfig
from glm_engine.model.glm130b.weights import (
    EMBEDDING_KEY,
    HEAD_FINGERPRINT,
    IGNORED_KEY_SUFFIXES,
    is_quantized_key,
    parameter_shapes,
)
from glm_engine.model.head_fingerprint import check_head_count
from glm_engine.quant.reference import stored_columns
from glm_engine.quant.weight import QuantizedWeight

SCALE_SUFFIX = "_scale"


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype


def infos_of(state_dict: Mapping[str, torch.Tensor | QuantizedWeight]) -> dict[str, TensorInfo]:
    """Shapes and dtypes of an in-memory or memory-mapped state dict (no tensor data is read); a QuantizedWeight
    counts as the fp16 ``[out, in]`` matrix it stands for."""
    infos = {}
    for key, value in state_dict.items():
        if isinstance(value, QuantizedWeight):
            infos[key] = TensorInfo((value.out_features, value.in_features), torch.float16)
        elif isinstance(value, torch.Tensor):
            infos[key] = TensorInfo(tuple(value.shape), value.dtype)
    return infos


def expected_layout(
    config: GLMConfig, tp: int, bits: int | None, group_size: int | None = None
) -> dict[str, tuple[int, ...]]:
    """Every key one rank must hold, with its shape; quantized linears add ``*_scale`` keys
    (docs/glm-semantics.md#quantized-checkpoint-layout):
    ``[out]`` for the reference's rowwise scales, ``[out, in / group_size]`` for groupwise ones."""
    shapes = parameter_shapes(config, tp)
    if bits is None:
        return shapes
    for key in [k for k in shapes if is_quantized_key(k)]:
        out, columns = shapes[key]
        shapes[key] = (out, stored_columns(columns, bits))
        shapes[key + SCALE_SUFFIX] = (out,) if group_size is None else (out, columns // group_size)
    return shapes


def detect_quantization(infos: Mapping[str, TensorInfo], config: GLMConfig, tp: int, source: str) -> int | None:
    """4, 8 or None, from the dtypes and shapes alone: int8 linears with ``_scale`` keys; INT4 stores half the
    columns. The reference needed ``--from-quantized-checkpoint`` and failed with "Missing keys" when it was wrong."""
    expected = parameter_shapes(config, tp)
    quantized = [k for k in expected if is_quantized_key(k) and k in infos and infos[k].dtype == torch.int8]
    if not quantized:
        return None
    widths = set()
    for key in quantized:
        columns, stored = expected[key][1], infos[key].shape[-1]
        if stored == stored_columns(columns, 8):
            widths.add(8)
        elif stored == stored_columns(columns, 4):
            widths.add(4)
        else:
            raise CheckpointError(
                f"{source}: quantized weight {key} has {stored} columns; a layer with {columns} inputs stores "
                f"{columns} (INT8) or {columns // 2} (INT4). Check the config (--config) and TP degree"
            )
    if len(widths) > 1:
        raise CheckpointError(f"{source} mixes INT4 and INT8 weights; glm-engine expects one bit width per checkpoint")
    return widths.pop()


def validate(
    infos: Mapping[str, TensorInfo],
    config: GLMConfig,
    tp: int,
    bits: int | None,
    source: str,
    group_size: int | None = None,
) -> list[str]:
    """Raise CheckpointError naming every missing, unexpected, misshapen or mistyped key of ``source``; return the
    keys the model does not use (recomputed buffers, extras outside ``transformer.``)."""
    expected = expected_layout(config, tp, bits, group_size)
    present = {k for k in infos if not k.endswith(IGNORED_KEY_SUFFIXES)}
    missing = sorted(set(expected) - present)
    extra = sorted(present - set(expected))
    unexpected = [k for k in extra if k.startswith("transformer.")]
    misshapen = [
        f"{k} is {list(infos[k].shape)}, expected {list(expected[k])}"
        for k in sorted(present & set(expected))
        if infos[k].shape != expected[k]
    ]
    mistyped = [
        f"{k} is {infos[k].dtype}"
        for k in sorted(present & set(expected))
        if (infos[k].dtype == torch.int8) != (bits is not None and is_quantized_key(k))
        or not (infos[k].dtype == torch.int8 or infos[k].dtype.is_floating_point)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)):
        if items:
            shown = ", ".join(items[:6]) + (f" ... ({len(items) - 6} more)" if len(items) > 6 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if mistyped and not problems:
        problems.append(f"{len(mistyped)} with the wrong dtype: {', '.join(mistyped[:6])}")
    if problems:
        quant = f", INT{bits}" if bits else ""
        raise CheckpointError(
            f"{source} does not match the model config ({config.num_layers} layers, hidden {config.hidden_size}, "
            f"vocab {config.vocab_size}, TP={tp}{quant}): " + "; ".join(problems) + ". Check the config (--config) "
            "or the file."
        )
    h, layers, heads = config.hidden_size, config.num_layers, config.num_attention_heads
    check_head_count(HEAD_FINGERPRINT, infos, h, layers, heads, source)
    return [k for k in infos if k not in expected]


def infer_config(infos: Mapping[str, TensorInfo], tp: int) -> GLMConfig | None:
    """The preset whose shapes this TP shard matches (e.g. the GLM-130B release needs no config file), or None."""
    embedding = infos.get(EMBEDDING_KEY)
    if embedding is None or len(embedding.shape) != 2:
        return None
    layers = {int(k.split(".")[2]) for k in infos if k.startswith("transformer.layers.")}
    vocab, hidden = embedding.shape[0] * tp, embedding.shape[1]
    for config in PRESETS.values():
        if (config.num_layers, config.hidden_size, config.vocab_size) == (len(layers), hidden, vocab):
            return config
    return None


def detect_group_size(infos: Mapping[str, TensorInfo], config: GLMConfig, tp: int) -> int | None:
    """The groupwise block size a quantized file's scales imply (None: rowwise ``[out]`` scales, as the reference)."""
    for key, shape in parameter_shapes(config, tp).items():
        scale = infos.get(key + SCALE_SUFFIX) if is_quantized_key(key) else None
        if scale is not None and len(scale.shape) == 2 and scale.shape[1] and shape[1] % scale.shape[1] == 0:
            return shape[1] // scale.shape[1]
    return None
