"""The exported-folder format: what a folder made by ``glm-engine export onnx`` (or ``export tensorrt``) is made of,
how its ``genai_config.json`` is written and read back, and which backend a folder needs.

Everything that reads an exported folder imports this package (the onnxruntime and tensorrt backends, the engine's
loader, the benchmark), and the exporter (:mod:`glm_engine.export`) writes through it. It imports none of them: not
the exporter, not the engine, no backend (only the dtype names of ``backends.base``). ``names`` holds the file and
graph I/O names, ``description`` the ``genai_config.json`` write/read, ``files`` the sizes and checksums of the folder's
files and their check, ``families`` the one switch on the model family, ``detect`` the folder-kind check.
docs/export.md describes the format.
"""

from glm_engine.exported.description import (
    ExportedInfo,
    ExportedModel,
    genai_config,
    read_exported,
    tokenizer_files,
)
from glm_engine.exported.detect import (
    BACKEND_FOR_KIND,
    ExportedKind,
    exported_backend,
    exported_kind,
    refuse_exported_folder,
)
from glm_engine.exported.families import config_from_section, model_section
from glm_engine.exported.files import check_files, file_records, file_sha256
from glm_engine.exported.names import (
    DATA_FILE,
    ENGINE_FILE,
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    FILES_SECTION,
    GENAI_CONFIG_FILE,
    LOGITS_TO_KEEP,
    MODEL_FILE,
    NUM_LOGITS,
    OPSET,
    READABLE_FORMAT_VERSIONS,
    TENSORRT_SECTION,
    TOKENIZER_FILE,
    QuantTarget,
    io_names,
    past_names,
    present_names,
)

__all__ = [
    "BACKEND_FOR_KIND",
    "DATA_FILE",
    "ENGINE_FILE",
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "FILES_SECTION",
    "GENAI_CONFIG_FILE",
    "LOGITS_TO_KEEP",
    "MODEL_FILE",
    "NUM_LOGITS",
    "OPSET",
    "READABLE_FORMAT_VERSIONS",
    "TENSORRT_SECTION",
    "TOKENIZER_FILE",
    "ExportedInfo",
    "ExportedKind",
    "ExportedModel",
    "QuantTarget",
    "check_files",
    "config_from_section",
    "exported_backend",
    "exported_kind",
    "file_records",
    "file_sha256",
    "genai_config",
    "io_names",
    "model_section",
    "past_names",
    "present_names",
    "read_exported",
    "refuse_exported_folder",
    "tokenizer_files",
]
