"""The names an exported folder is made of: its files, its format tag and versions, the quantization targets, and the
decoder graph's input/output names and symbolic dimensions, which the exporter writes and the runners bind.

The KV-cache names are the ones onnxruntime-genai uses (``past_key_values.{i}.key/value`` in, ``present.{i}.key/value``
out), so the folder reads like other genai exports; docs/export.md describes the folder as a whole.
"""

from __future__ import annotations

from enum import Enum

from glm_engine.tokenizer.ice import MODEL_FILENAME

# Files of an ONNX export folder. ``genai_config.json`` is written last: it marks the folder complete.
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"  # every weight, always external (no protobuf 2 GB limit)
GENAI_CONFIG_FILE = "genai_config.json"
TOKENIZER_FILE = MODEL_FILENAME  # the tokenizer model, copied in
# ``genai_config.json``'s section listing every other file of the folder with its size and sha256 (``files.py``).
FILES_SECTION = "files"
# A TensorRT folder holds the engine (its presence marks the folder as TensorRT's), the ONNX export's
# ``genai_config.json`` with a ``tensorrt`` section added, and the tokenizer.
ENGINE_FILE = "model.engine"
TENSORRT_SECTION = "tensorrt"

EXPORT_FORMAT = "glm-engine-onnx"
# 2: the graph takes ``logits_to_keep`` (the positions whose logits are computed). Version 1 folders (logits for every
# position) still run: the runners look for the input by name.
EXPORT_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
# The graph's opset: 21 is the first whose DequantizeLinear takes blocks and INT4 (ONNX operator changelog).
OPSET = 21


class QuantTarget(str, Enum):
    """Which runtime an export's quantized linears are written for: ``ort`` (``com.microsoft::MatMulNBits``) or
    ``tensorrt`` (opset-21 ``DequantizeLinear``, which ONNX Runtime runs too). Recorded in ``genai_config.json``."""

    ort = "ort"
    tensorrt = "tensorrt"


# Symbolic dimension names of the dynamic axes (as onnxruntime-genai names them).
BATCH, SEQ, PAST, TOTAL = "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"
NUM_LOGITS = "num_logits"

# Graph inputs and outputs.
INPUT_IDS, POSITION_IDS, ATTENTION_MASK = "input_ids", "position_ids", "attention_mask"
LOGITS_TO_KEEP = "logits_to_keep"  # since format version 2
LOGITS = "logits"
KV_KINDS = ("key", "value")
PAST_NAMES = {kind: f"past_key_values.%d.{kind}" for kind in KV_KINDS}  # %d: the layer
PRESENT_NAMES = {kind: f"present.%d.{kind}" for kind in KV_KINDS}


def past_names(num_layers: int) -> list[str]:
    """The past key/value inputs, layer-major, key before value."""
    return [PAST_NAMES[kind] % layer for layer in range(num_layers) for kind in KV_KINDS]


def present_names(num_layers: int) -> list[str]:
    """The present key/value outputs, in the order of :func:`past_names`."""
    return [PRESENT_NAMES[kind] % layer for layer in range(num_layers) for kind in KV_KINDS]


def io_names(num_layers: int) -> dict[str, list[str]]:
    """The graph's input and output names, in order."""
    inputs = [INPUT_IDS, POSITION_IDS, ATTENTION_MASK, LOGITS_TO_KEEP, *past_names(num_layers)]
    return {"inputs": inputs, "outputs": [LOGITS, *present_names(num_layers)]}
