"""``export_onnx``: a checkpoint (or preset) to a folder holding ``model.onnx``, ``model.onnx.data``, a
``genai_config.json`` and the tokenizer, written atomically (a hidden staging folder renamed into place). GLM-130B
checkpoints (native or SAT) are read here; ChatGLM-6B Hugging Face folders by :mod:`glm_engine.export.chatglm_onnx`,
through the same writer (:func:`write_export`).

Memory: weights are read one layer at a time (``Checkpoint.rank_state_dict`` with that layer's keys; quantized on
the way exactly as ``glm_engine.load`` quantizes them) and each tensor is appended to the data file as it is emitted
(:mod:`glm_engine.export.onnx_builder`), so an export holds the embedding plus one layer, never two copies of the
model. The data file is always external (any size, no protobuf 2 GB limit); the ``.onnx`` file holds only the graph.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import torch

from glm_engine.backends.base import dtype_name
from glm_engine.checkpoint import open_checkpoint
from glm_engine.checkpoint.atomic import staged_folder
from glm_engine.engine.source import DEFAULT_MODEL, RANDOM_WEIGHTS_SEED, resolve_config
from glm_engine.engine.source import is_preset as _is_preset
from glm_engine.errors import InputError
from glm_engine.export.glm_onnx import LOGITS_TO_KEEP, NUM_LOGITS, OPSET, GLMGraph, QuantEmit, io_names
from glm_engine.export.onnx_builder import GraphBuilder
from glm_engine.export.quant_onnx import QuantTarget, check_target
from glm_engine.model.chatglm.config import ChatGLMConfig
from glm_engine.model.glm130b.config import GLMConfig
from glm_engine.model.glm130b.weights import EMBEDDING_KEY, FINAL_LN_KEYS, quantize_linears, random_state_dict
from glm_engine.model.weights import LayerWeights, layer_key
from glm_engine.quant.spec import QuantSpec
from glm_engine.quant.weight import QuantizedWeight
from glm_engine.tokenizer import BUILTIN_TOKENIZER_PATH, MODEL_FILENAME, find_tokenizer_model

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
GENAI_CONFIG_FILE = "genai_config.json"
EXPORT_FORMAT = "glm-engine-onnx"
# 2: the graph takes ``logits_to_keep`` (the positions whose logits are computed). Version 1 folders (logits for every
# position) still run: the runners look for the input by name.
EXPORT_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ExportedModel:
    """What ``export_onnx`` wrote, as ``genai_config.json`` describes it."""

    folder: Path
    config: GLMConfig | ChatGLMConfig
    dtype: torch.dtype
    max_seq: int
    quant: QuantSpec | None
    target: QuantTarget
    weight_bytes: int
    weights_sha256: str
    accuracy_level: int = 0
    quant_output: bool = False

    @property
    def model_file(self) -> Path:
        return self.folder / MODEL_FILE


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


def check_output_quant(quant_output: bool, spec: QuantSpec | None) -> None:
    """An InputError for ``--quant-output`` without a quantization to take the format from."""
    if quant_output and spec is None:
        raise InputError(
            "--quant-output quantizes the output projection like the linears: add --quant int8|int4 (or export a "
            "quantized checkpoint)"
        )


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
    from glm_engine.export.chatglm_onnx import ChatGLMGraph, ChatGLMSource, is_chatglm_source

    if is_chatglm_source(source):
        if config is not None:
            raise InputError("--config applies to GLM-130B checkpoints; a ChatGLM folder's config.json is used as is")
        weights: WeightSource = ChatGLMSource(source, dtype, quant, quant_output=quant_output)
        graph_type: type[GLMGraph] = ChatGLMGraph
    else:
        weights, graph_type = _Weights(source, config, dtype, quant, quant_output), GLMGraph
    return write_export(weights, graph_type, output, dtype, max_seq, target, accuracy_level, progress)


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
    """Emit ``weights`` through ``graph_type`` layer by layer into ``output`` (see :func:`export_onnx`)."""
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
        shutil.copyfile(weights.tokenizer, staging / MODEL_FILENAME)
        write_durably(staging / GENAI_CONFIG_FILE, json.dumps(description, indent=2) + "\n")
        fsync_file(staging / MODEL_FILENAME)
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


def fsync_file(path: Path) -> None:
    """Flush ``path``'s content to disk (staged_folder fsyncs directories and expects files already flushed)."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def write_durably(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    fsync_file(path)


def genai_config(exported: ExportedModel, source: str) -> dict[str, Any]:
    """The ``genai_config.json`` content: I/O names and layout, special tokens, the model config, quantization."""
    c = exported.config
    names = io_names(c.num_layers)
    spec = exported.quant
    model = model_section(c)
    position_shape = model.pop("position_ids_shape")
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "source": source,
        "model": {
            **model,
            "context_length": exported.max_seq,
            "vocab_size": c.vocab_size,
            "decoder": {
                "filename": MODEL_FILE,
                "external_data": DATA_FILE,
                "opset": OPSET,
                "dtype": dtype_name(exported.dtype),
                "num_hidden_layers": c.num_layers,
                "num_attention_heads": c.num_attention_heads,
                "num_key_value_heads": c.num_attention_heads,
                "head_size": c.head_dim,
                "hidden_size": c.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "position_ids": "position_ids",
                    "attention_mask": "attention_mask",
                    "logits_to_keep": LOGITS_TO_KEEP,
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "input_order": names["inputs"],
                "output_order": names["outputs"],
                "shapes": {
                    "input_ids": ["batch_size", "sequence_length"],
                    "position_ids": position_shape,
                    "attention_mask": ["batch_size", 1, "sequence_length", "total_sequence_length"],
                    "logits_to_keep": [NUM_LOGITS],
                    "past_key_values": ["batch_size", c.num_attention_heads, "past_sequence_length", c.head_dim],
                    "logits": ["batch_size", NUM_LOGITS, c.vocab_size],
                },
                "logits_to_keep_semantics": (
                    "int64 sequence positions (0 <= p < sequence_length) whose logits are computed, in order; "
                    "[sequence_length - 1] for generation, 0 .. sequence_length - 1 for every position"
                ),
                "attention_mask_semantics": (
                    "bool, true = blocked (may not attend): GLM's prefix-bidirectional mask over past + new tokens; "
                    "every query row must leave at least one key unblocked"
                ),
                "kv_cache": "keys after rotary, [batch, heads, positions, head_size]; present = past + new tokens",
            },
        },
        "quantization": None
        if spec is None
        else {
            "bits": spec.bits,
            "scheme": "rowwise" if spec.group_size is None else "groupwise",
            "group_size": spec.group_size,
            "symmetric": True,
            "target": exported.target.value,
            "accuracy_level": exported.accuracy_level if exported.target is QuantTarget.ort else None,
            "op": "com.microsoft::MatMulNBits" if exported.target is QuantTarget.ort else "DequantizeLinear (opset 21)",
            "output": exported.quant_output,
        },
        "weights": {"bytes": exported.weight_bytes, "sha256": exported.weights_sha256},
        "tokenizer": MODEL_FILENAME,
    }


def model_section(config: GLMConfig | ChatGLMConfig) -> dict[str, Any]:
    """The model-specific part of ``genai_config.json``: type, config (in the model's own names), special tokens and
    the shape of ``position_ids`` (``position_ids_shape``, which the caller moves into the decoder's shapes)."""
    if isinstance(config, ChatGLMConfig):
        return {
            "type": "chatglm",
            "config": config.to_hf_dict(),
            "num_image_tokens": config.num_image_tokens,  # tokenizer_config.json's: where text piece 0 sits
            "bos_token_id": config.bos_token_id,
            "eos_token_id": list(config.end_token_ids),
            "pad_token_id": config.pad_token_id,
            "special_tokens": {
                "mask": config.mask_token_id,
                "gmask": config.gmask_token_id,
                "sop": config.bos_token_id,
                "eop": config.eos_token_id,
                "pad": config.pad_token_id,
            },
            "position_ids_shape": ["batch_size", 2, "sequence_length"],
        }
    layout = config.vocab_layout
    return {
        "type": "glm",
        "config": config.to_dict(),
        "bos_token_id": layout.sop,
        "eos_token_id": [layout.eos, layout.eop],
        "pad_token_id": layout.pad,
        "special_tokens": layout.to_dict(),
        "position_ids_shape": ["batch_size", "sequence_length"],
    }


@dataclass(frozen=True)
class ExportedInfo:
    """An exported folder as a runtime needs it: the model config (positions bounded by the export's
    ``context_length``), the graph dtype, and the full ``genai_config.json``."""

    folder: Path
    config: GLMConfig | ChatGLMConfig
    dtype: torch.dtype
    description: dict[str, Any]

    @property
    def is_chatglm(self) -> bool:
        return isinstance(self.config, ChatGLMConfig)

    @property
    def model_file(self) -> Path:
        return self.folder / self.description["model"]["decoder"]["filename"]


def read_exported(folder: str | Path) -> ExportedInfo:
    """Read ``genai_config.json`` of a folder made by ``export_onnx``, or say what the folder is missing."""
    from glm_engine.backends.base import DTYPE_NAMES
    from glm_engine.errors import CheckpointError
    from glm_engine.model.glm130b.config import read_json_object

    folder = Path(folder)
    path = folder / GENAI_CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{folder} is not an exported model (no {GENAI_CONFIG_FILE}); make one with "
            "`glm-engine export onnx --checkpoint PATH --output DIR`"
        )
    data = read_json_object(path)
    if data.get("format") != EXPORT_FORMAT or data.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise CheckpointError(
            f"{path} describes format {data.get('format')!r} v{data.get('format_version')}; this glm-engine reads "
            f"{EXPORT_FORMAT} v{', v'.join(map(str, READABLE_FORMAT_VERSIONS))}: re-export the model"
        )
    model = data["model"]
    if model.get("type") == "chatglm":
        config = ChatGLMConfig.from_hf_dict(model["config"], str(path), model.get("num_image_tokens"))
    else:
        config = GLMConfig.from_dict(model["config"], source=str(path))
    config = config.with_overrides(max_sequence_length=int(model["context_length"]))
    return ExportedInfo(folder, config, DTYPE_NAMES[model["decoder"]["dtype"]], data)
