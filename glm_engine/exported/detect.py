"""Which kind of exported folder a path is, from its files alone (nothing is parsed), and the error that names the
backend it needs when it was handed to one that cannot run it (an op-level backend would otherwise fail on the
missing weights with a less helpful message).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from glm_engine.errors import InputError
from glm_engine.exported.names import ENGINE_FILE, GENAI_CONFIG_FILE

ExportedKind = Literal["onnx", "tensorrt"]
# The backend that runs each kind (the registry's names).
BACKEND_FOR_KIND: dict[ExportedKind, str] = {"onnx": "onnxruntime", "tensorrt": "tensorrt"}


def exported_kind(path: str | Path | None) -> ExportedKind | None:
    """``"tensorrt"`` for a TensorRT engine folder, ``"onnx"`` for an ONNX export, None for anything else (a preset
    name, a checkpoint, a missing path). A folder is exported when it holds ``genai_config.json`` (written last, so
    an interrupted export does not count); TensorRT's also holds the engine."""
    if path is None or not (Path(path) / GENAI_CONFIG_FILE).is_file():
        return None
    return "tensorrt" if (Path(path) / ENGINE_FILE).is_file() else "onnx"


def exported_backend(path: str | Path | None) -> str | None:
    """The backend that runs the exported folder ``path``, or None when it is not one."""
    kind = exported_kind(path)
    return None if kind is None else BACKEND_FOR_KIND[kind]


def refuse_exported_folder(path: str | Path | None) -> None:
    """An InputError naming the backend an exported folder needs, for callers about to load ``path`` with an
    op-level backend; nothing for any other path."""
    kind = exported_kind(path)
    if kind == "tensorrt":
        raise InputError(f"{path} is a TensorRT engine folder: use --backend tensorrt (backend='tensorrt')")
    if kind == "onnx":
        raise InputError(f"{path} is an ONNX export: use --backend onnxruntime (backend='onnxruntime')")
