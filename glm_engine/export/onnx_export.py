"""``export_onnx``: any model source ``glm_engine.load`` takes (a checkpoint of any family, or a preset) to a folder
holding ``model.onnx``, ``model.onnx.data``, a ``genai_config.json`` and the tokenizer, through
:mod:`glm_engine.export.writer`, which writes the folder atomically holding one layer's weights at a time.

The weights come from the same reader ``load`` uses (:func:`glm_engine.engine.source.open_source`) and are quantized
under the same plan: ``--quant`` quantizes the linears of a floating-point source on the way, a quantized checkpoint
or release is exported as it is stored, and ``--quant-output`` quantizes the output projection in the linears'
format (a copy of a tied embedding, or the separate ``lm_head``), as ``load(..., quant_output=True)`` does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from glm_engine.engine.plan import check_quant_fits, output_name, refuse_double_quantization, require_output_format
from glm_engine.engine.source import DEFAULT_MODEL, ModelSource, open_source
from glm_engine.errors import InputError, TokenizerError
from glm_engine.export.writer import Progress, write_export
from glm_engine.exported import TOKENIZER_FILE, ExportedModel, QuantTarget, refuse_exported_folder
from glm_engine.exported.ops import EXPORTED_OPS
from glm_engine.model.registry import family_of
from glm_engine.model.weights import LayerWeights, ReadRequest, WeightLayout, quantized_copy
from glm_engine.quant.spec import QuantSpec
from glm_engine.quant.weight import QuantizedWeight


class LayerStream:
    """A model's weights for the writer, one layer's worth at a time, read and quantized as ``load`` reads them."""

    def __init__(
        self,
        source: ModelSource,
        dtype: torch.dtype,
        quant: QuantSpec | None,
        quant_output: bool = False,
        tokenizer: str | Path | None = None,
    ) -> None:
        reader, family = source.reader, source.family
        unexported = family.parts(source.config).required_ops() - EXPORTED_OPS
        if unexported:
            names = ", ".join(sorted(op.value for op in unexported))
            raise InputError(
                f"{source.description} needs ops the ONNX export does not emit ({names}); run it on an "
                "op-level backend (cpu, cuda, rocm_dcu, ascend)"
            )
        stored = reader.stored_quant
        refuse_double_quantization(quant, stored, source.description)
        self.reader, self.dtype, self.requested = reader, dtype, quant
        self.config = source.config
        self.layout: WeightLayout = family.weight_layout(source.config)
        self.quant = quant or stored  # the format the linears are written in
        if quant_output:
            require_output_format(self.layout, self.quant)
        if self.quant is not None:
            check_quant_fits(self.layout, 1, self.quant, quant_output)
        self.quant_output = quant_output
        self.output_name = "output_projection" if self.layout.output_key is None else output_name(self.layout)
        self.description = source.description
        # ``tokenizer`` (a file or its folder) resolved as ``load`` resolves it; before anything is written
        loaded = family.load_tokenizer(source.config, tokenizer, source.folder, source.random)
        self.tokenizer_files = tokenizer_files(loaded)

    def read(self, keys: list[str]) -> dict[str, Any]:
        output_quant = self.quant if self.quant_output else None
        return self.reader.read(ReadRequest(dtype=self.dtype, quant=self.requested, output_quant=output_quant), keys)

    def layers(self) -> Iterator[LayerWeights]:
        for n in range(self.layout.num_layers):
            names = {name: self.layout.layer_key(n, name) for name in self.layout.layer_fields}
            tensors = self.read(list(names.values()))
            yield LayerWeights(**{name: tensors[key] for name, key in names.items()})

    def output_projection(self) -> torch.Tensor | QuantizedWeight | None:
        """The logits' weight: a separate matrix (quantized with ``--quant-output``), or None for the tied embedding
        (with ``--quant-output``, a quantized copy of it made from its fp16 values, as ``load`` makes it)."""
        if self.layout.output_key is not None:
            return self.read([self.layout.output_key])[self.layout.output_key]
        if not self.quant_output:
            return None
        return quantized_copy(self.read([self.layout.embedding_key])[self.layout.embedding_key], self.quant)


def tokenizer_files(tokenizer: object) -> dict[str, Path]:
    """The files an export carries so that its family's ``load_tokenizer`` finds the tokenizer in the exported folder,
    by their names there, the main one first: the files a tokenizer lists in ``files`` (a chat tokenizer reads
    several: ``tokenizer.model`` or ``tokenizer.json``, ``tokenizer_config.json`` ...), under their own names; else
    the one SentencePiece model of GLM-130B's and ChatGLM-6B's tokenizers (``model_path``), as ``ice_text.model``."""
    files = getattr(tokenizer, "files", None)
    if isinstance(files, Mapping) and files:
        return {str(name): Path(path) for name, path in files.items()}
    if files:
        return {Path(f).name: Path(f) for f in files}
    model_path = getattr(tokenizer, "model_path", None)
    if model_path is None:
        raise TokenizerError(
            f"{type(tokenizer).__name__} names no files to copy into the export: give it `files` (the paths it "
            "reads), so the exported folder carries its tokenizer"
        )
    return {TOKENIZER_FILE: Path(model_path)}


def export_onnx(
    source: str | Path = DEFAULT_MODEL,
    output: str | Path = "model-onnx",
    dtype: torch.dtype = torch.float32,
    max_seq: int | None = None,
    quant: QuantSpec | None = None,
    target: QuantTarget = QuantTarget.ort,
    accuracy_level: int = 0,
    config: Any = None,
    progress: Progress | None = None,
    quant_output: bool = False,
    tokenizer: str | Path | None = None,
) -> ExportedModel:
    """Export the decoder of ``source`` into the new folder ``output``: whatever ``glm_engine.load`` takes (a
    checkpoint folder of any family, a preset name), recognised the same way.

    ``max_seq`` bounds positions (the rotary tables' rows; default: the model's ``max_sequence_length``). ``quant``
    quantizes the linears like ``glm-engine run --quant`` (a quantized checkpoint is exported as stored), written for
    ``target``: ``ort`` (MatMulNBits with ``accuracy_level``) or ``tensorrt`` (opset-21 DequantizeLinear).
    ``config`` (a preset or config.json) names the shapes of a folder without its own config (a GLM-130B SAT folder).
    ``progress(done, total)`` counts layers. ``quant_output`` quantizes the logits' weight in the same format.
    ``tokenizer`` (a file or its folder, as ``load`` takes it) is the tokenizer copied into the export when the
    checkpoint folder has none of its own.
    """
    refuse_exported_folder(source)
    weights = LayerStream(open_source(source, config), dtype, quant, quant_output, tokenizer)
    return write_export(weights, output, dtype, max_seq, target, accuracy_level, progress)


def export_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: Any,
    output: str | Path,
    dtype: torch.dtype = torch.float32,
    max_seq: int | None = None,
    quant: QuantSpec | None = None,
    target: QuantTarget = QuantTarget.ort,
    progress: Progress | None = None,
) -> ExportedModel:
    """Export an in-memory state dict under ``config``'s family's names (tests, tools); folders go through
    :func:`export_onnx`. The packaged test tokenizer goes with it."""
    family = family_of(config)
    reader = family.state_dict_reader(state_dict, config, "a state dict")
    source = ModelSource("a state dict", family, config, "a state dict", reader, None, random=True)
    return write_export(LayerStream(source, dtype, quant), output, dtype, max_seq, target, 0, progress)
