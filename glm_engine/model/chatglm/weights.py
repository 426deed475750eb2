"""ChatGLM-6B weights: the Hugging Face key names, shapes and tensor-parallel splits, validation that names every bad
key with its file, and the INT4/INT8 releases' stored form.

Keys are those of ``THUDM/chatglm-6b``'s ``pytorch_model.bin.index.json``: GLM-130B's per-layer names
(``transformer.layers.{i}.attention.query_key_value.weight`` ...) plus ``lm_head.weight``, a separate output matrix.
``*.rotary_emb.inv_freq`` buffers are recomputed, never loaded (the reference ignores them too).

Quantized checkpoints (``THUDM/chatglm-6b-int4`` / ``-int8``, or ``model.quantize(bits)`` saved) replace a linear's
``weight`` by int8 values ``[out, in * bits / 8]`` (INT4: two per byte, the even column in the high nibble) and add
``weight_scale`` (fp16 ``[out]``). The bit width follows from the stored shape, so no flag is needed; such a weight
becomes a ``QuantizedWeight`` (:func:`canonical_state_dict`), run by the backend's kernels or dequantized while loading
exactly as the reference's extraction kernels do (:func:`dequantize_like_reference`).

Tensor parallelism (``docs/tensor-parallelism.md``) splits them as GLM-130B's, except that ``dense_h_to_4h`` is a plain
column-parallel linear (no GLU halves) and ``lm_head`` is column-parallel over the vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from glm_engine.checkpoint.hf import TensorInfo
from glm_engine.errors import CheckpointError
from glm_engine.model.chatglm.config import ChatGLMConfig
from glm_engine.model.weights import WeightLayout, layer_key, layer_parameter_shapes, scaled_noise
from glm_engine.parallel.sharding import Split
from glm_engine.quant.reference import dequantize, unpack_int4
from glm_engine.quant.weight import QuantizedWeight

EMBEDDING_KEY = "transformer.word_embeddings.weight"
FINAL_LN_KEYS = ("transformer.final_layernorm.weight", "transformer.final_layernorm.bias")
LM_HEAD_KEY = "lm_head.weight"
# Recomputed buffers the released files carry (modeling_chatglm.py's RotaryEmbedding ignores them on load).
IGNORED_KEY_SUFFIXES = (".rotary_emb.inv_freq",)
# A quantized ``X.weight`` comes with ``X.weight_scale`` (quantization.py's QuantizedLinear / QuantizedEmbedding).
SCALE_SUFFIX = "_scale"
# Key prefixes that belong to the model: an unknown key under them means the config does not match the file.
MODEL_KEY_PREFIXES = ("transformer.", "lm_head.")
_ROW = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")
_COLUMN = (
    "attention.query_key_value.weight",
    "attention.query_key_value.bias",
    "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias",
    "word_embeddings.weight",
    LM_HEAD_KEY,
)


def split_of(key: str) -> Split:
    """How ``key`` is split across tensor-parallel ranks."""
    if key.endswith(_ROW):
        return Split.ROW
    if key.endswith(_COLUMN):
        return Split.COLUMN
    return Split.REPLICATED


def weight_layout(config: ChatGLMConfig) -> WeightLayout:
    """Every key with its TP=1 shape; the logits come from ``lm_head``, not the embedding."""
    return WeightLayout(
        parameter_shapes(config),
        split_of,
        config.num_layers,
        EMBEDDING_KEY,
        FINAL_LN_KEYS,
        LM_HEAD_KEY,
        IGNORED_KEY_SUFFIXES,
    )


def parameter_shapes(config: ChatGLMConfig) -> dict[str, tuple[int, ...]]:
    """Every expected key with its unquantized shape."""
    h, i = config.hidden_size, config.inner_hidden_size
    layer_shapes = layer_parameter_shapes(h, i, i)  # a plain MLP: no GeGLU halves
    shapes: dict[str, tuple[int, ...]] = {EMBEDDING_KEY: (config.vocab_size, h)}
    for layer in range(config.num_layers):
        for name, shape in layer_shapes.items():
            shapes[layer_key(layer, name)] = shape
    shapes.update({key: (h,) for key in FINAL_LN_KEYS})
    shapes[LM_HEAD_KEY] = (config.vocab_size, h)
    return shapes


@dataclass
class LoadPlan:
    """The result of validating a checkpoint's key set: which keys are quantized (and how) and which are unused."""

    quantized_bits: dict[str, int]  # weight key -> 4 or 8
    unused_keys: list[str]

    @property
    def bits(self) -> int:
        """The checkpoint's weight bit width: 0 (floating point), 4 or 8."""
        return next(iter(self.quantized_bits.values()), 0)


def _quantized_bits(info: TensorInfo, expected: tuple[int, ...]) -> int | None:
    """4 or 8 from the stored int8 shape of a weight expected as ``[out, in]``; None if it fits neither."""
    out, columns = expected
    if len(info.shape) != 2 or info.shape[0] != out:
        return None
    if info.shape[1] == columns:
        return 8
    if info.shape[1] * 2 == columns:
        return 4
    return None


def plan_load(entries: Mapping[str, TensorInfo], config: ChatGLMConfig, source: str) -> LoadPlan:
    """Validate keys, shapes and dtypes of a checkpoint against ``config`` before anything heavy is read.

    Raises a CheckpointError listing every missing, unexpected and misshapen key (with the file it came from) and
    every inconsistency of a quantized checkpoint; returns which keys are quantized and which keys are unused.
    """
    expected = parameter_shapes(config)
    present = {k: v for k, v in entries.items() if not k.endswith(IGNORED_KEY_SUFFIXES)}
    scales = {k[: -len(SCALE_SUFFIX)]: v for k, v in present.items() if k.endswith(".weight" + SCALE_SUFFIX)}
    tensors = {k: v for k, v in present.items() if not k.endswith(".weight" + SCALE_SUFFIX)}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    unexpected = [f"{k} (in {tensors[k].file})" for k in extra if k.startswith(MODEL_KEY_PREFIXES)]
    unexpected += [f"{k}{SCALE_SUFFIX} (in {v.file})" for k, v in sorted(scales.items()) if k not in tensors]
    misshapen: list[str] = []
    quantized: dict[str, int] = {}
    for key in sorted(set(expected) & set(tensors)):
        info, want = tensors[key], expected[key]
        if info.dtype == torch.int8 and key in scales:
            bits = _quantized_bits(info, want)
            scale = scales[key]
            if bits is None:
                misshapen.append(
                    f"{key} in {info.file} is int8 {info.shape}, which is neither INT8 {want} nor INT4 "
                    f"({want[0]}, {want[1] // 2})"
                )
            elif scale.shape != (want[0],) or not scale.dtype.is_floating_point:
                shown = f"{scale.dtype} {scale.shape}"
                misshapen.append(f"{key}{SCALE_SUFFIX} in {scale.file} is {shown}, expected ({want[0]},) float")
            else:
                quantized[key] = bits
        elif info.shape != want:
            misshapen.append(f"{key} in {info.file} is {info.shape}, expected {want}")
        elif not info.dtype.is_floating_point:
            what = "without a weight_scale" if info.dtype == torch.int8 else ""
            misshapen.append(f"{key} in {info.file} is {info.dtype} {what}".rstrip() + ", expected floating point")
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)):
        if items:
            shown = "; ".join(items[:8]) + (f" ... ({len(items) - 8} more)" if len(items) > 8 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise CheckpointError(
            f"{source} does not match the ChatGLM config ({config.num_layers} layers, hidden {config.hidden_size}, "
            f"MLP {config.inner_hidden_size}, vocab {config.vocab_size}): "
            + " | ".join(problems)
            + ". Check config.json against the weight files."
        )
    widths = sorted(set(quantized.values()))
    if len(widths) > 1:
        raise CheckpointError(f"{source} mixes INT4 and INT8 weights; the reference quantizes every linear alike")
    if widths and config.quantization_bit and widths[0] != config.quantization_bit:
        raise CheckpointError(
            f"{source}: config.json says quantization_bit {config.quantization_bit} but the weights are "
            f"INT{widths[0]} (from their shapes); fix quantization_bit in config.json"
        )
    return LoadPlan(quantized, [k for k in extra if not k.startswith(MODEL_KEY_PREFIXES)])


def dequantize_like_reference(stored: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """The float weight the reference computes with, from int8 values (INT4 packed) and the per-row scale.

    fp16: the CUDA extraction kernels' ``half(q) * scale``, one fp16 rounding (``quant.reference.dequantize``).
    fp32 (and fp64): the CPU kernels ``extract_int{4,8}_weight_to_float``, ``float(scale) * q``, which is exact.
    bf16: that exact product rounded once to bf16.
    """
    if dtype == torch.float16:
        return dequantize(stored, scale, bits, torch.float16)
    values = unpack_int4(stored) if bits == 4 else stored
    work = torch.float64 if dtype == torch.float64 else torch.float32
    return (values.to(work) * scale.to(work)[:, None]).to(dtype)


def release_values(stored: torch.Tensor, bits: int) -> torch.Tensor:
    """Unpacked int8 values of a release's stored weight (INT4: two per byte, even column high)."""
    return unpack_int4(stored) if bits == 4 else stored.to(torch.int8)


def random_state_dict(config: ChatGLMConfig, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Seeded random weights under the Hugging Face names that keep activations O(1) and greedy output varied.

    Embedding rows ~ N(0, 1); linears (lm_head too) ~ N(0, 1/fan_in); LayerNorm gains 1 +- 0.2; biases ~ N(0, 0.1).
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in parameter_shapes(config).items():
        out[key] = scaled_noise(key, torch.randn(shape, generator=gen)).to(dtype)
    return out


def canonical_state_dict(
    tensors: Mapping[str, torch.Tensor], quantized_bits: Mapping[str, int]
) -> dict[str, torch.Tensor | QuantizedWeight]:
    """A release's tensors with each stored INT4/INT8 weight and its ``weight_scale`` made one ``QuantizedWeight``
    (``quantized_bits`` from :func:`plan_load`); keys the model does not use are dropped."""
    out: dict[str, torch.Tensor | QuantizedWeight] = {}
    for key, value in tensors.items():
        if key.endswith(".weight" + SCALE_SUFFIX) or key.endswith(IGNORED_KEY_SUFFIXES):
            continue
        bits = quantized_bits.get(key)
        if bits is not None:
            values = release_values(value, bits)
            out[key] = QuantizedWeight.from_values(values, tensors[key + SCALE_SUFFIX], bits)
        else:
            out[key] = value
    return out


def dequantize_stored(weight: QuantizedWeight, dtype: torch.dtype) -> torch.Tensor:
    """A quantized weight dequantized as the reference's kernels do for ``dtype`` (see
    :func:`dequantize_like_reference`)."""
    return dequantize_like_reference(weight.stored, weight.scale[:, 0], weight.bits, dtype)
