"""ChatGLM-6B's Hugging Face checkpoint folder, validated from metadata, then read one weight file at a time.

A folder holds ``config.json`` (ChatGLM's names, ``"model_type": "chatglm"``), optionally ``tokenizer_config.json``
and ``ice_text.model``, and the weights as one of (looked for in this order):

* ``model.safetensors.index.json`` + the files its ``weight_map`` names, or one ``model.safetensors``;
* ``pytorch_model.bin.index.json`` + ``pytorch_model-0000x-of-0000y.bin`` (how ``THUDM/chatglm-6b`` ships), or one
  ``pytorch_model.bin`` (how ``THUDM/chatglm-6b-int4`` / ``-int8`` ship).

``.bin`` files are read with ``torch.load(weights_only=True, mmap=True)``: a file that would need to run code is
refused, and memory mapping means validation reads only the pickled metadata. Loading then converts the tensors of
one file before opening the next, so host RAM holds one source file's pages plus the converted weights.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from glm_engine.checkpoint.native import LazySafetensors
from glm_engine.checkpoint.torch_file import load_torch_file
from glm_engine.errors import CheckpointError, ConfigError
from glm_engine.model.chatglm_config import MODEL_TYPE, ChatGLMConfig
from glm_engine.model.chatglm_weights import TensorInfo

CONFIG_FILE_NAME = "config.json"
TOKENIZER_CONFIG_FILE_NAME = "tokenizer_config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_FILE = "pytorch_model.bin"
WEIGHT_LAYOUTS = (SAFETENSORS_INDEX, SAFETENSORS_FILE, BIN_INDEX, BIN_FILE)


def is_chatglm_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` has a Hugging Face ``config.json`` of a ChatGLM model (``model_type`` ``chatglm``)."""
    try:
        data = json.loads((folder / CONFIG_FILE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("model_type") == MODEL_TYPE


def read_torch_weights(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save``d state dict, loaded without running code and memory-mapped (legacy files: fully read)."""
    obj = load_torch_file(path)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a state dict (a mapping of names to tensors)")
    return obj


@dataclass
class HFCheckpoint:
    """A ChatGLM Hugging Face folder: its config, weight files and what each tensor is (from metadata)."""

    path: Path
    config: ChatGLMConfig
    layout: str  # the file that decided the layout: one of WEIGHT_LAYOUTS
    files: list[Path]
    entries: dict[str, TensorInfo] = field(default_factory=dict)

    def describe(self) -> str:
        return f"ChatGLM checkpoint {self.path} ({len(self.files)} x {self.layout.split('.index')[0]})"

    def read(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """The tensors of ``keys`` as stored, opening only the files that hold them, one at a time: safetensors
        reads just those tensors, zip-format ``.bin`` files are memory-mapped, a legacy pre-zip ``.bin`` is read
        whole on each call (re-save such a folder once before exporting from it). For readers that go layer by
        layer (export) rather than file by file (:meth:`shards`)."""
        by_file: dict[str, list[str]] = {}
        for key in keys:
            if key not in self.entries:
                raise CheckpointError(f"{self.describe()} has no tensor {key}")
            by_file.setdefault(self.entries[key].file, []).append(key)
        out: dict[str, torch.Tensor] = {}
        for name, names in by_file.items():
            weights = _open_weights(self.path / name)
            out.update({key: weights[key] for key in names})
            del weights
        return out

    def shards(self) -> Iterator[tuple[str, Mapping[str, torch.Tensor]]]:
        """Each weight file's tensors in turn; a file is released before the next is opened."""
        for path in self.files:
            shard = _open_weights(path)
            try:
                yield path.name, shard
            finally:
                del shard


def _open_weights(path: Path) -> Mapping[str, torch.Tensor]:
    return LazySafetensors(path) if path.suffix == ".safetensors" else read_torch_weights(path)


def _infos(path: Path) -> dict[str, TensorInfo]:
    weights = _open_weights(path)
    infos = {k: TensorInfo(tuple(v.shape), v.dtype, path.name) for k, v in weights.items()}
    del weights
    return infos


def _weight_files(folder: Path) -> tuple[str, list[Path], dict[str, str]]:
    """(layout, files in order, the index's key -> file name map or {})."""
    for name in WEIGHT_LAYOUTS:
        if not (folder / name).is_file():
            continue
        if not name.endswith(".index.json"):
            return name, [folder / name], {}
        try:
            weight_map = json.loads((folder / name).read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{folder / name} is not a weight index (no 'weight_map' object): {exc}") from None
        files = sorted(set(map(str, weight_map.values())))
        bad = [f for f in files if Path(f).name != f]
        if bad:
            raise CheckpointError(f"{folder / name} points outside its folder: {bad[0]}")
        absent = [f for f in files if not (folder / f).is_file()]
        if absent:
            raise CheckpointError(f"{folder / name} lists files that are not there: {', '.join(absent)}")
        return name, [folder / f for f in files], {str(k): str(v) for k, v in weight_map.items()}
    raise CheckpointError(
        f"{folder} has a ChatGLM {CONFIG_FILE_NAME} but no weights: expected one of {', '.join(WEIGHT_LAYOUTS)}"
    )


def read_chatglm_config(folder: Path) -> ChatGLMConfig:
    """``config.json``, with ``num_image_tokens`` from ``tokenizer_config.json`` when that file says it."""
    num_image_tokens = None
    tokenizer_config = folder / TOKENIZER_CONFIG_FILE_NAME
    if tokenizer_config.is_file():
        try:
            value = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("num_image_tokens")
        except (ValueError, AttributeError) as exc:
            raise ConfigError(f"{tokenizer_config} is not a JSON object: {exc}") from None
        num_image_tokens = value if isinstance(value, int) else None
    return ChatGLMConfig.from_json_file(folder / CONFIG_FILE_NAME, num_image_tokens=num_image_tokens)


def open_chatglm_checkpoint(path: str | Path, config: ChatGLMConfig | None = None) -> HFCheckpoint:
    """Recognise a ChatGLM folder and read every weight file's metadata (no tensor data); ``config`` overrides
    ``config.json``. Validation against the config is :func:`glm_engine.model.chatglm_weights.plan_load`."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"ChatGLM checkpoint {folder} is not a folder")
    if not (folder / CONFIG_FILE_NAME).is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_FILE_NAME}; a ChatGLM Hugging Face folder needs one")
    config = config or read_chatglm_config(folder)
    layout, files, index = _weight_files(folder)
    entries: dict[str, TensorInfo] = {}
    for file in files:
        infos = _infos(file)
        listed = [k for k, f in index.items() if f == file.name]
        absent = [k for k in listed if k not in infos]
        if absent:
            raise CheckpointError(f"{layout} puts {', '.join(absent[:5])} in {file.name}, which does not hold it")
        for key, info in infos.items():
            entries.setdefault(key, info)
    return HFCheckpoint(folder, config, layout, files, entries)
