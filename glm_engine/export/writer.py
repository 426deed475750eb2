"""The writer every ONNX export goes through: a model's weights (a :class:`WeightSource`, read one layer at a time)
emitted through its graph class into a new folder holding ``model.onnx``, ``model.onnx.data``, the tokenizer and
``genai_config.json`` (:mod:`glm_engine.exported` names the files and writes the description, with every other file's
size and sha256 in its ``files`` section), written atomically: a hidden staging folder renamed into place,
``genai_config.json`` last.

Memory: weights are read one layer at a time (the model's ``WeightReader`` with that layer's keys; quantized on the
way exactly as ``glm_engine.load`` quantizes them) and each tensor is appended to the data file as it is emitted
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
from glm_engine.errors import InputError, TokenizerError
from glm_engine.export.decoder_onnx import DecoderGraph, QuantEmit
from glm_engine.export.onnx_builder import GraphBuilder
from glm_engine.export.quant_onnx import check_target
from glm_engine.exported import (
    DATA_FILE,
    FILES_SECTION,
    GENAI_CONFIG_FILE,
    MODEL_FILE,
    OPSET,
    ExportedModel,
    QuantTarget,
    file_records,
    genai_config,
)
from glm_engine.model.registry import family_of
from glm_engine.model.weights import LayerWeights, WeightLayout
from glm_engine.quant.spec import QuantSpec
from glm_engine.quant.weight import QuantizedWeight

Progress = Callable[[int, int], None]


class WeightSource(Protocol):
    """What :func:`write_export` reads: the model config and weight layout, the quantization its linears carry, where
    the weights and tokenizer come from, and the weights one layer at a time (quantized linears as
    ``QuantizedWeight``); :class:`glm_engine.export.onnx_export.LayerStream` is the one the exporter uses."""

    config: Any
    layout: WeightLayout
    quant: QuantSpec | None
    quant_output: bool  # the logits' weight is quantized in ``quant``'s format too
    output_name: str  # the logits' weight's initializer prefix
    description: str
    tokenizer_files: dict[str, Path]  # the tokenizer's files by their names in the export, the main one first

    def read(self, keys: list[str]) -> dict[str, Any]: ...

    def layers(self) -> Iterator[LayerWeights]: ...

    def output_projection(self) -> torch.Tensor | QuantizedWeight | None:
        """The logits' weight ``[vocab, hidden]``, or None when it is the embedding (tied)."""


def write_export(
    weights: WeightSource,
    output: str | Path,
    dtype: torch.dtype,
    max_seq: int | None,
    target: QuantTarget,
    accuracy_level: int,
    progress: Progress | None,
) -> ExportedModel:
    """Emit ``weights`` through the decoder graph layer by layer into ``output`` (see
    :func:`glm_engine.export.onnx_export.export_onnx`)."""
    model_config = weights.config
    max_seq = model_config.max_sequence_length if max_seq is None else max_seq
    if not 0 < max_seq <= model_config.max_sequence_length:
        raise InputError(f"--max-seq must lie in [1, {model_config.max_sequence_length}], got {max_seq}")
    spec = weights.quant
    if spec is not None:
        layout = weights.layout
        widths = tuple(sorted({layout.shapes[key][1] for key in layout.quantizable}))
        check_target(target, spec.bits, spec.group_size, widths)
    total = model_config.num_layers + 2
    with staged_folder(output, markers=(GENAI_CONFIG_FILE,)) as staging:  # what marks the folder complete: last
        g = GraphBuilder(staging / DATA_FILE, OPSET)
        graph = DecoderGraph(g, model_config, dtype, max_seq, QuantEmit(target, accuracy_level))
        layout = weights.layout
        x = graph.embed(weights.read([layout.embedding_key])[layout.embedding_key])
        if progress is not None:
            progress(1, total)
        for n, layer in enumerate(weights.layers()):
            x = graph.layer(n, layer, x)
            if progress is not None:
                progress(n + 2, total)
        final = weights.read(list(layout.final_norm_keys))
        head = weights.output_projection()
        output_fn = None if head is None else (lambda h: graph.matmul(h, weights.output_name, head))
        final_weight, *final_bias = (final[key] for key in layout.final_norm_keys)  # an RMSNorm has no bias
        graph.head(x, final_weight, final_bias[0] if final_bias else None, output_fn)
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
            tuple(weights.tokenizer_files),
        )
        description = genai_config(exported, weights.description)
        name = description["model"]["type"]
        g.finish(staging / MODEL_FILE, name, "glm-engine", {"glm_engine.genai_config": json.dumps(description)})
        copy_tokenizer(weights, staging)
        # Every file's size and sha256, checked before a runtime opens the folder (the graph's own copy of the
        # description above cannot list its own checksum); the data file's was computed while it was written.
        names = [MODEL_FILE, DATA_FILE, *weights.tokenizer_files]
        description[FILES_SECTION] = file_records(staging, names, {DATA_FILE: g.weights_sha256})
        write_durably(staging / GENAI_CONFIG_FILE, json.dumps(description, indent=2) + "\n")
        if progress is not None:
            progress(total, total)
    return exported


def copy_tokenizer(weights: WeightSource, staging: Path) -> None:
    """Copy the tokenizer's files into the staged folder and load the tokenizer from there, as ``glm_engine.load``
    will (``Family.load_tokenizer`` on the exported folder), so a folder whose tokenizer would not load is never
    completed."""
    for name, path in weights.tokenizer_files.items():
        shutil.copyfile(path, staging / name)
        fsync_file(staging / name)
    config = weights.config
    try:
        family_of(config).load_tokenizer(config, None, staging, False)
    except TokenizerError as exc:
        raise TokenizerError(
            f"the export's tokenizer files ({', '.join(weights.tokenizer_files)}) do not load from the exported "
            f"folder: {exc}. Name every file the tokenizer reads in its `files`"
        ) from exc
