"""``genai_config.json``, the description an exported folder carries: written from what the exporter produced
(:class:`ExportedModel`, :func:`genai_config`) and read back, validated, by the runtimes (:func:`read_exported`).

It follows onnxruntime-genai's layout (the decoder's file, I/O names and shapes, special tokens) and adds what a
glm-engine runtime needs: the model's config in its own names, the graph dtype, the quantization and a digest of the
weights. docs/export.md describes every field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glm_engine.backends.base import DTYPE_NAMES, dtype_name
from glm_engine.errors import CheckpointError
from glm_engine.exported.families import config_from_section, kv_heads, model_section
from glm_engine.exported.names import (
    DATA_FILE,
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    GENAI_CONFIG_FILE,
    LOGITS_TO_KEEP,
    MODEL_FILE,
    NUM_LOGITS,
    OPSET,
    READABLE_FORMAT_VERSIONS,
    TOKENIZER_FILE,
    QuantTarget,
    io_names,
)
from glm_engine.model.config_checks import read_json_object
from glm_engine.quant.spec import QuantSpec


@dataclass(frozen=True)
class ExportedModel:
    """What ``export_onnx`` wrote, as ``genai_config.json`` describes it."""

    folder: Path
    config: Any  # the family's config
    dtype: torch.dtype
    max_seq: int
    quant: QuantSpec | None
    target: QuantTarget
    weight_bytes: int
    weights_sha256: str
    accuracy_level: int = 0
    quant_output: bool = False
    tokenizer_files: tuple[str, ...] = (TOKENIZER_FILE,)  # the tokenizer's files in the folder, the main one first

    @property
    def model_file(self) -> Path:
        return self.folder / MODEL_FILE


def genai_config(exported: ExportedModel, source: str) -> dict[str, Any]:
    """The ``genai_config.json`` content: I/O names and layout, special tokens, the model config, quantization."""
    c = exported.config
    names = io_names(c.num_layers)
    spec = exported.quant
    model = model_section(c)
    kv = kv_heads(c)
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
                "num_key_value_heads": kv,
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
                    "past_key_values": ["batch_size", kv, "past_sequence_length", c.head_dim],
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
                "kv_cache": (
                    "keys after rotary, [batch, num_key_value_heads, positions, head_size]; present = past + new "
                    "tokens; query head i reads key/value head i // (num_attention_heads / num_key_value_heads)"
                ),
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
        "tokenizer": exported.tokenizer_files[0],
        "tokenizer_files": list(exported.tokenizer_files),
    }


def tokenizer_files(description: dict[str, Any]) -> list[str]:
    """The names of the tokenizer's files in an exported folder (the main one first): ``tokenizer_files``, or the one
    ``tokenizer`` file of folders written before chat tokenizers carried several (``tokenizer.json`` and
    ``tokenizer_config.json``, say)."""
    return list(description.get("tokenizer_files") or [description["tokenizer"]])


@dataclass(frozen=True)
class ExportedInfo:
    """An exported folder as a runtime needs it: the model config (positions bounded by the export's
    ``context_length``), the graph dtype, and the full ``genai_config.json``."""

    folder: Path
    config: Any  # the family's config
    dtype: torch.dtype
    description: dict[str, Any]

    @property
    def model_type(self) -> str:
        """The ``model`` section's ``type``: the family's name (``glm``, ``chatglm``)."""
        return self.description["model"].get("type", "")

    @property
    def model_file(self) -> Path:
        return self.folder / self.description["model"]["decoder"]["filename"]


def read_exported(folder: str | Path) -> ExportedInfo:
    """Read ``genai_config.json`` of a folder made by ``export_onnx`` (or built from one by ``export tensorrt``), or
    say what the folder is missing."""
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
    config = config_from_section(model, str(path)).with_overrides(max_sequence_length=int(model["context_length"]))
    return ExportedInfo(folder, config, DTYPE_NAMES[model["decoder"]["dtype"]], data)
