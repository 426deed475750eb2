"""The writer every ONNX export goes through: a model's weights (a :class:`WeightSource`, read one layer at a time)
emitted through its graph class into a new folder holding ``model.onnx``, ``model.onnx.data``, the tokenizer and
``genai_config.json`` (:mod:`glm_engine.exported` names the files and writes the description), written atomically: a
hidden staging folder renamed into place, ``genai_config.json`` last.

Memory: weights are read one layer at a time (``Checkpoint.rank_state_dict`` with that layer's keys; quantized on
the way exactly as ``glm_engine.load`` quantizes them) and each tensor is appended to the data file as it is emitted
(:mod:`glm_engine.export.onnx_builder`), so an export holds the embedding plus one layer, never two copies of the
model. The data file is always external (any size, no protobuf 2 GB limit); the ``.onnx`` file holds only the graph.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from glm_engine.checkpoint.atomic import fsync_file, staged_folder, write_durably
from glm_engine.config import GLMConfig
from glm_engine.errors import InputError
from glm_engine.export.glm_onnx import GLMGraph, QuantEmit
from glm_engine.export.onnx_builder import GraphBuilder
from glm_engine.export.quant_onnx import check_target
from glm_engine.exported import (
    DATA_FILE,
    GENAI_CONFIG_FILE,
    MODEL_FILE,
    OPSET,
    TOKENIZER_FILE,
    ExportedModel,
    QuantTarget,
    genai_config,
)
from glm_engine.model.chatglm_config import ChatGLMConfig
from glm_engine.model.weights import EMBEDDING_KEY, FINAL_LN_KEYS, LayerWeights
from glm_engine.quant.spec import QuantSpec
from glm_engine.quant.weight import QuantizedWeight

Progress = Callable[[int, int], None]


class WeightSource(Protocol):
    """What :func:`write_export` reads: the model config, the quantization its linears carry, where the weights
    and tokenizer come from, and the weights one layer at a time (quantized linears as ``QuantizedWeight``)."""

    config: GLMConfig | ChatGLMConfig
    quant: QuantSpec | None
    quant_output: bool  # the logits' weight is quantized in ``quant``'s format too
    output_name: str  # the logits' weight's initializer prefix
    description: str
    tokenizer: Path

    def read(self, keys: list[str]) -> dict[str, Any]: ...

    def layers(self) -> Iterator[LayerWeights]: ...

    def output_projection(self) -> torch.Tensor | QuantizedWeight | None:
        """The logits' weight ``[vocab, hidden]``, or None when it is the embedding (tied)."""


def check_output_quant(quant_output: bool, spec: QuantSpec | None) -> None:
    """An InputError for ``--quant-output`` without a quantization to take the format from."""
    if quant_output and spec is None:
        raise InputError(
            "--quant-output quantizes the output projection like the linears: add --quant int8|int4 (or export a "
            "quantized checkpoint)"
        )


def quantized_widths(config: GLMConfig | ChatGLMConfig) -> tuple[int, ...]:
    """The input widths of the quantized linears: hidden (QKV, dense, h->4h) and the MLP's inner width (4h->h)."""
    return (config.hidden_size, config.inner_hidden_size)


def write_export(
    weights: WeightSource,
    graph_type: type[GLMGraph],
    output: str | Path,
    dtype: torch.dtype,
    max_seq: int | None,
    target: QuantTarget,
    accuracy_level: int,
    progress: Progress | None,
) -> ExportedModel:
    """Emit ``weights`` through ``graph_type`` layer by layer into ``output`` (see
    :func:`glm_engine.export.onnx_export.export_onnx`)."""
    model_config = weights.config
    max_seq = model_config.max_sequence_length if max_seq is None else max_seq
    if not 0 < max_seq <= model_config.max_sequence_length:
        raise InputError(f"--max-seq must lie in [1, {model_config.max_sequence_length}], got {max_seq}")
    spec = weights.quant
    if spec is not None:
        widths = quantized_widths(model_config)
        check_group_fits(widths, spec)
        check_target(target, spec.bits, spec.group_size, widths)
    total = model_config.num_layers + 2
    with staged_folder(output, markers=(GENAI_CONFIG_FILE,)) as staging:  # what marks the folder complete: last
        g = GraphBuilder(staging / DATA_FILE, OPSET)
        graph = graph_type(g, model_config, dtype, max_seq, QuantEmit(target, accuracy_level))
        x = graph.embed(weights.read([EMBEDDING_KEY])[EMBEDDING_KEY])
        if progress is not None:
            progress(1, total)
        for n, layer in enumerate(weights.layers()):
            x = graph.layer(n, layer, x)
            if progress is not None:
                progress(n + 2, total)
        final = weights.read(list(FINAL_LN_KEYS))
        head = weights.output_projection()
        output_fn = None if head is None else (lambda h: graph.matmul(h, weights.output_name, head))
        graph.head(x, final[FINAL_LN_KEYS[0]], final[FINAL_LN_KEYS[1]], output_fn)
        exported = ExportedModel(
            Path(output),
            model_config,
            dtype,
            max_seq,
            spec,
            target,
            g.weight_bytes,
            g.weights_sha256,
            accuracy_level,
            weights.quant_output,
        )
        description = genai_config(exported, weights.description)
        name = description["model"]["type"]
        g.finish(staging / MODEL_FILE, name, "glm-engine", {"glm_engine.genai_config": json.dumps(description)})
        shutil.copyfile(weights.tokenizer, staging / TOKENIZER_FILE)
        write_durably(staging / GENAI_CONFIG_FILE, json.dumps(description, indent=2) + "\n")
        fsync_file(staging / TOKENIZER_FILE)
        if progress is not None:
            progress(total, total)
    return exported


def check_group_fits(widths: tuple[int, ...], spec: QuantSpec) -> None:
    """An InputError unless the group size divides every quantized linear's input width."""
    bad = [w for w in widths if spec.group_size is not None and w % spec.group_size]
    if bad:
        raise InputError(
            f"group size {spec.group_size} does not divide the {bad[0]} inputs of this model's linears; choose a "
            "group size from 32, 64, 128 that does, or rowwise"
        )
