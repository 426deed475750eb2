"""A Hugging Face checkpoint folder's weight files, described from metadata, then read one file at a time.

A folder holds ``config.json`` (whose ``model_type`` says which family reads it), tokenizer files, and the weights as
one of (looked for in this order):

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
from glm_engine.errors import CheckpointError

CONFIG_FILE_NAME = "config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_FILE = "pytorch_model.bin"
WEIGHT_LAYOUTS = (SAFETENSORS_INDEX, SAFETENSORS_FILE, BIN_INDEX, BIN_FILE)


@dataclass(frozen=True)
class TensorInfo:
    """What a checkpoint says about one tensor before it is read: its shape, dtype and the file holding it."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    file: str


def model_type(folder: Path) -> str | None:
    """The ``model_type`` of ``folder``'s Hugging Face ``config.json``; None when there is no readable one."""
    try:
        data = json.loads((folder / CONFIG_FILE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("model_type") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def read_torch_weights(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save``d state dict, loaded without running code and memory-mapped (legacy files: fully read)."""
    obj = load_torch_file(path)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a state dict (a mapping of names to tensors)")
    return obj


@dataclass
class HFCheckpoint:
    """A Hugging Face folder's weight files and what each tensor is (from metadata)."""

    path: Path
    layout: str  # the file that decided the layout: one of WEIGHT_LAYOUTS
    files: list[Path]
    entries: dict[str, TensorInfo] = field(default_factory=dict)

    def describe(self) -> str:
        return f"checkpoint {self.path} ({len(self.files)} x {self.layout.split('.index')[0]})"

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
            weights = open_weight_file(self.path / name)
            out.update({key: weights[key] for key in names})
            del weights
        return out

    def shards(self) -> Iterator[tuple[str, Mapping[str, torch.Tensor]]]:
        """Each weight file's tensors in turn; a file is released before the next is opened."""
        for path in self.files:
            shard = open_weight_file(path)
            try:
                yield path.name, shard
            finally:
                del shard


def open_weight_file(path: Path) -> Mapping[str, torch.Tensor]:
    """One weight file's tensors: safetensors read lazily, ``.bin`` memory-mapped (legacy files read whole)."""
    return LazySafetensors(path) if path.suffix == ".safetensors" else read_torch_weights(path)


def _infos(path: Path) -> dict[str, TensorInfo]:
    weights = open_weight_file(path)
    if isinstance(weights, LazySafetensors):  # from the header: reading values would read the tensors
        return {k: TensorInfo(v.shape, v.dtype, path.name) for k, v in weights.infos().items()}
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
        f"{folder} has a {CONFIG_FILE_NAME} but no weights: expected one of {', '.join(WEIGHT_LAYOUTS)}"
    )


def open_hf_checkpoint(path: str | Path) -> HFCheckpoint:
    """Read every weight file's metadata of a Hugging Face folder (no tensor data); the family that reads the
    folder validates the tensors against its config."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} is not a folder")
    if not (folder / CONFIG_FILE_NAME).is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_FILE_NAME}; a Hugging Face folder needs one")
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
    return HFCheckpoint(folder, layout, files, entries)
