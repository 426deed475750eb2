"""ChatGLM-6B (v1) as the same ONNX decoder graph: what differs from GLM-130B, as ``model/chatglm.py`` has it, and
where its weights come from (a Hugging Face folder, read layer by layer).

``position_ids`` are ``[batch, 2, seq]`` (positions, then block positions); each head's query and key are split in two
halves rotated by one row each with ChatGLM's own table (``chatglm_rotary_table``); the MLP is tanh-GeLU, not GeGLU;
biases are fused (``nn.Linear``, the same Add in a graph); ``alpha`` is ``sqrt(2 * 28)``; ``lm_head`` is its own matrix.
The I/O names, the mask, ``logits_to_keep`` and the KV-cache layout are GLM-130B's.

Weights (:class:`ChatGLMSource`) are converted as ``load_chatglm`` converts them, one layer at a time, so an export
holds the embedding plus one layer: floating-point tensors to the graph dtype; ``--quant`` quantizes the four linears
per layer from their fp16 values; the INT4/INT8 releases keep their stored integers and scales (exported quantized).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from glm_engine.checkpoint.hf import is_chatglm_checkpoint, open_chatglm_checkpoint
from glm_engine.engine import MAX_RANDOM_PARAMETERS, RANDOM_WEIGHTS_SEED
from glm_engine.errors import InputError
from glm_engine.export.glm_onnx import GLMGraph
from glm_engine.export.writer import Progress, check_output_quant, write_export
from glm_engine.exported import ExportedModel, QuantTarget
from glm_engine.exported.names import BATCH, SEQ
from glm_engine.model.chatglm_config import CHATGLM_PRESETS, ROTARY_BASE, ChatGLMConfig, chatglm_preset
from glm_engine.model.chatglm_weights import (
    LM_HEAD_KEY,
    SCALE_SUFFIX,
    TensorInfo,
    plan_load,
    quantizable_keys,
    random_state_dict,
    release_values,
)
from glm_engine.model.rotary import chatglm_rotary_table
from glm_engine.model.weights import LayerWeights, layer_key
from glm_engine.ops.torch_ops import GELU_TANH_CUBIC, GELU_TANH_SCALE
from glm_engine.quant.spec import QuantSpec
from glm_engine.quant.weight import QuantizedWeight
from glm_engine.tokenizer.ice import BUILTIN_TOKENIZER_PATH


def is_chatglm_source(source: str | Path) -> bool:
    """Whether ``source`` is a ChatGLM-6B Hugging Face folder (``model_type`` ``chatglm``) or a ChatGLM preset."""
    name = str(source)
    if name in CHATGLM_PRESETS and not Path(name).exists():
        return True
    return Path(name).expanduser().is_dir() and is_chatglm_checkpoint(Path(name).expanduser())


class ChatGLMGraph(GLMGraph):
    """GLMGraph with ChatGLM-6B's positions, rotary, MLP and biases."""

    def position_shape(self) -> list[int | str]:
        return [BATCH, 2, SEQ]

    def rotary_tables(self, max_seq: int) -> tuple[torch.Tensor, torch.Tensor]:
        return chatglm_rotary_table(self.config.rotary_dim, max_seq, self.dtype, "cpu", ROTARY_BASE)

    def rotations(self, position_ids: str) -> list[tuple[str, str]]:
        g, out = self.g, []
        axes = g.const([2], torch.int64, "axis2")
        for row in (0, 1):  # position ids, then block position ids
            ids = g.node("Gather", [position_ids, g.const(row, torch.int64, "row")], axis=1)  # [b, s]
            cos = g.node("Unsqueeze", [g.node("Gather", [self.cos_table, ids], axis=0), axes])
            sin = g.node("Unsqueeze", [g.node("Gather", [self.sin_table, ids], axis=0), axes])
            out.append((cos, sin))
        return out

    def rotary(self, q: str, k: str, rotations: list[tuple[str, str]]) -> tuple[str, str]:
        g = self.g
        q_halves = g.node("Split", [q], outputs=2, axis=-1, num_outputs=2)
        k_halves = g.node("Split", [k], outputs=2, axis=-1, num_outputs=2)
        q_out = [self.rotate(half, cos, sin) for half, (cos, sin) in zip(q_halves, rotations)]
        k_out = [self.rotate(half, cos, sin) for half, (cos, sin) in zip(k_halves, rotations)]
        return g.node("Concat", q_out, axis=-1), g.node("Concat", k_out, axis=-1)

    def activation(self, x: str) -> str:
        """``0.5 * x * (1 + tanh(0.79788... * x * (1 + 0.044715 * x * x)))`` in TorchOps.gelu's order."""
        g, dt = self.g, self.dtype
        cubic = g.node("Add", [self.one, g.node("Mul", [g.node("Mul", [g.const(GELU_TANH_CUBIC, dt), x]), x])])
        inner = g.node("Mul", [g.node("Mul", [g.const(GELU_TANH_SCALE, dt), x]), cubic])
        return g.node("Mul", [g.node("Mul", [self.half, x]), g.node("Add", [self.one, g.node("Tanh", [inner])])])

    def row_parallel(self, x: str, name: str, weight: torch.Tensor, bias: torch.Tensor) -> str:
        return self.linear(x, name, weight, bias)


class ChatGLMSource:
    """ChatGLM weights one layer at a time from a Hugging Face folder, a ChatGLM preset (seeded random weights, as
    ``load_chatglm`` makes them) or an in-memory state dict; quantized linears come out as ``QuantizedWeight``."""

    def __init__(
        self,
        source: str | Path | Mapping[str, torch.Tensor],
        dtype: torch.dtype,
        quant: QuantSpec | None,
        config: ChatGLMConfig | None = None,
        tokenizer: Path = BUILTIN_TOKENIZER_PATH,
        quant_output: bool = False,
    ) -> None:
        from glm_engine.chatglm_engine import find_chatglm_tokenizer

        self.dtype = dtype
        self.checkpoint = None
        stored_bits: dict[str, int] = {}
        if isinstance(source, Mapping):  # an in-memory state dict (Hugging Face key names), validated like a folder
            if config is None:
                raise InputError("exporting a ChatGLM state dict needs its config")
            self.config, self._state = config, source
            self.description, self.tokenizer = "a ChatGLM state dict", tokenizer
            entries = {k: TensorInfo(tuple(v.shape), v.dtype, self.description) for k, v in source.items()}
            stored_bits = plan_load(entries, config, self.description).quantized_bits
        elif str(source) in CHATGLM_PRESETS and not Path(str(source)).exists():
            self.config = chatglm_preset(str(source))
            if self.config.num_parameters() > MAX_RANDOM_PARAMETERS:
                raise InputError(
                    f"preset {source} has {self.config.num_parameters() / 1e9:.1f}B parameters: random weights are "
                    "only for small presets; pass a checkpoint folder"
                )
            self._state = random_state_dict(self.config, RANDOM_WEIGHTS_SEED)
            self.description = f"preset {source} with random weights (seed {RANDOM_WEIGHTS_SEED})"
            self.tokenizer = BUILTIN_TOKENIZER_PATH
        else:
            self.checkpoint = open_chatglm_checkpoint(source)
            self.config = self.checkpoint.config
            self.tokenizer = find_chatglm_tokenizer(None, self.checkpoint.path)  # fail before writing anything
            stored_bits = plan_load(self.checkpoint.entries, self.config, str(self.checkpoint.path)).quantized_bits
            self.description = self.checkpoint.describe()
        if quant is not None and stored_bits:
            raise InputError(
                f"{self.description} is already INT{next(iter(stored_bits.values()))}; export it without --quant "
                "(it stays quantized) or quantize its FP16 original"
            )
        self.stored_bits = stored_bits
        self.requested = quant
        bits = next(iter(stored_bits.values()), 0)
        self.quant = quant or (QuantSpec(bits) if bits else None)
        check_output_quant(quant_output, self.quant)
        self.quant_output, self.output_name = quant_output, "lm_head"
        self._quantizable = set(quantizable_keys(self.config))

    def _raw(self, keys: list[str]) -> dict[str, torch.Tensor]:
        if self.checkpoint is None:
            return {k: self._state[k] for k in keys}
        return self.checkpoint.read(keys)

    def read(self, keys: list[str]) -> dict[str, Any]:
        """``keys`` converted as ``load_chatglm`` converts them (see the module docstring)."""
        wanted = [k + SCALE_SUFFIX if k in self.stored_bits else None for k in keys]
        raw = self._raw(keys + [w for w in wanted if w is not None])
        out: dict[str, Any] = {}
        for key in keys:
            tensor = raw[key]
            if key in self.stored_bits:
                bits = self.stored_bits[key]
                out[key] = QuantizedWeight.from_values(release_values(tensor, bits), raw[key + SCALE_SUFFIX], bits)
            elif self.requested is not None and key in self._quantizable:
                spec = self.requested
                out[key] = QuantizedWeight.quantize(tensor.to(torch.float16), spec.bits, spec.group_size)
            else:
                out[key] = tensor.to(self.dtype).contiguous()
        return out

    def layers(self) -> Iterator[LayerWeights]:
        for n in range(self.config.num_layers):
            names = {f.name: layer_key(n, f.name) for f in fields(LayerWeights)}
            tensors = self.read(list(names.values()))
            yield LayerWeights(**{name: tensors[key] for name, key in names.items()})

    def output_projection(self) -> torch.Tensor | QuantizedWeight:
        """``lm_head``; with ``quant_output`` quantized from its fp16 values in the linears' format (a release's
        bits, rowwise), as ``load_chatglm(..., quant_output=True)`` does."""
        if not self.quant_output:
            return self.read([LM_HEAD_KEY])[LM_HEAD_KEY]
        head = self._raw([LM_HEAD_KEY])[LM_HEAD_KEY]
        return QuantizedWeight.quantize(head.to(torch.float16), self.quant.bits, self.quant.group_size)


def export_chatglm(
    state_dict: Mapping[str, torch.Tensor],
    config: ChatGLMConfig,
    output: str | Path,
    dtype: torch.dtype = torch.float32,
    max_seq: int | None = None,
    quant: QuantSpec | None = None,
    target: QuantTarget = QuantTarget.ort,
    progress: Progress | None = None,
) -> ExportedModel:
    """Export an in-memory ChatGLM state dict (Hugging Face key names); folders go through ``export_onnx``."""
    weights = ChatGLMSource(state_dict, dtype, quant, config)
    return write_export(weights, ChatGLMGraph, output, dtype, max_seq, target, 0, progress)
