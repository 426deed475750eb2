"""``export_onnx``: a checkpoint (or preset) to a folder holding ``model.onnx``, ``model.onnx.data``, a
``genai_config.json`` and the tokenizer. GLM-130B checkpoints (native or SAT) are read here; ChatGLM-6B Hugging Face
folders by :mod:`glm_engine.export.chatglm_onnx`; both go through :mod:`glm_engine.export.writer`, which writes the
folder atomically holding one layer's weights at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from glm_engine.checkpoint import open_checkpoint
from glm_engine.config import GLMConfig
from glm_engine.engine import DEFAULT_MODEL, RANDOM_WEIGHTS_SEED, _is_preset, resolve_config
from glm_engine.errors import InputError
from glm_engine.export.chatglm_onnx import ChatGLMGraph, ChatGLMSource, is_chatglm_source
from glm_engine.export.glm_onnx import GLMGraph
from glm_engine.export.writer import Progress, WeightSource, check_output_quant, write_export
from glm_engine.exported import ExportedModel, QuantTarget
from glm_engine.model.weights import EMBEDDING_KEY, LayerWeights, layer_key, quantize_linears, random_state_dict
from glm_engine.quant.spec import QuantSpec
from glm_engine.quant.weight import QuantizedWeight
from glm_engine.tokenizer import BUILTIN_TOKENIZER_PATH, find_tokenizer_model


class _Weights:
    """GLM-130B's weights, one layer's worth at a time, from a preset (seeded random) or a checkpoint."""

    def __init__(
        self,
        source: str | Path,
        config: str | Path | GLMConfig | None,
        dtype: torch.dtype,
        quant: QuantSpec | None,
        quant_output: bool = False,
    ) -> None:
        self.quant, self.dtype, self.quant_output = quant, dtype, quant_output
        self.output_name = "output_projection"
        if _is_preset(source):
            self.config = resolve_config(config) or resolve_config(str(source))
            state = random_state_dict(self.config, RANDOM_WEIGHTS_SEED)
            self._state = quantize_linears(state, quant.bits, quant.group_size) if quant is not None else state
            self.checkpoint = None
            self.description = f"preset {source} with random weights (seed {RANDOM_WEIGHTS_SEED})"
            self.tokenizer = BUILTIN_TOKENIZER_PATH
        else:
            self.checkpoint = open_checkpoint(source, resolve_config(config))
            self.config = self.checkpoint.config
            if quant is not None and self.checkpoint.quant_spec is not None:
                raise InputError(
                    f"{self.checkpoint.describe()} is already quantized; export it without --quant (it stays "
                    "quantized) or quantize its FP16 original"
                )
            self.quant = quant or self.checkpoint.quant_spec
            self.description = "the built-in demo model" if str(source) == DEFAULT_MODEL else self.checkpoint.describe()
            self.tokenizer = find_tokenizer_model(None, source)
        check_output_quant(quant_output, self.quant)

    def read(self, keys: list[str]) -> dict[str, Any]:
        if self.checkpoint is None:
            return {k: self._state[k] for k in keys}
        return self.checkpoint.rank_state_dict(0, 1, self.dtype, "cpu", keys=keys, quant=self.quant_request)

    @property
    def quant_request(self) -> QuantSpec | None:
        """Quantize while reading only when the checkpoint is floating point (a quantized one is read as stored)."""
        return self.quant if self.checkpoint is not None and self.checkpoint.quant_spec is None else None

    def layers(self) -> Iterator[LayerWeights]:
        for n in range(self.config.num_layers):
            names = {f.name: layer_key(n, f.name) for f in fields(LayerWeights)}
            tensors = self.read(list(names.values()))
            yield LayerWeights(**{name: tensors[key] for name, key in names.items()})

    def output_projection(self) -> QuantizedWeight | None:
        """None: the logits use the embedding table itself (tied). With ``quant_output``, a quantized copy of it made
        from its fp16 values, as ``glm_engine.load(..., quant_output=True)`` makes it (the lookup keeps the table)."""
        if not self.quant_output:
            return None
        table = self.read([EMBEDDING_KEY])[EMBEDDING_KEY]
        return QuantizedWeight.quantize(table.to(torch.float16), self.quant.bits, self.quant.group_size)


def export_onnx(
    source: str | Path,
    output: str | Path,
    dtype: torch.dtype = torch.float32,
    max_seq: int | None = None,
    quant: QuantSpec | None = None,
    target: QuantTarget = QuantTarget.ort,
    accuracy_level: int = 0,
    config: str | Path | GLMConfig | None = None,
    progress: Progress | None = None,
    quant_output: bool = False,
) -> ExportedModel:
    """Export the decoder of ``source`` into the new folder ``output``: a GLM-130B checkpoint folder or preset name,
    or a ChatGLM-6B Hugging Face folder (or ``chatglm-tiny``), recognised as ``glm-engine chat`` recognises it.

    ``max_seq`` bounds positions (the rotary tables' rows; default: the model's ``max_sequence_length``). ``quant``
    quantizes the linears like ``glm-engine run --quant`` (a quantized checkpoint is exported as stored), written for
    ``target``: ``ort`` (MatMulNBits with ``accuracy_level``) or ``tensorrt`` (opset-21 DequantizeLinear).
    ``config`` (a preset or config.json) applies to GLM-130B checkpoints only. ``progress(done, total)`` counts layers.
    ``quant_output`` quantizes the logits' weight in the same format (GLM-130B: a copy of the tied embedding;
    ChatGLM: ``lm_head``), as ``glm_engine.load``/``load_chatglm`` do with ``quant_output=True``.
    """
    if is_chatglm_source(source):
        if config is not None:
            raise InputError("--config applies to GLM-130B checkpoints; a ChatGLM folder's config.json is used as is")
        weights: WeightSource = ChatGLMSource(source, dtype, quant, quant_output=quant_output)
        graph_type: type[GLMGraph] = ChatGLMGraph
    else:
        weights, graph_type = _Weights(source, config, dtype, quant, quant_output), GLMGraph
    return write_export(weights, graph_type, output, dtype, max_seq, target, accuracy_level, progress)
