"""glm-engine's native checkpoint: ``config.json`` + safetensors with the reference's key names (TP=1 layout).

Small models are one ``model.safetensors``; large ones are ``model-00001-of-0000N.safetensors`` files plus
``model.safetensors.index.json`` (``weight_map``: key -> file, as Hugging Face writes it). Loading reads each tensor
straight into its final dtype (``checkpoint/stream.py``), so host RAM holds the weights plus one chunk. Quantized
weights keep the reference's stored form (int8, INT4 packed) with ``*_scale`` keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from glm_engine.checkpoint.atomic import write_atomically
from glm_engine.checkpoint.layout import TensorInfo
from glm_engine.checkpoint.stream import DTYPES, StoredTensor, equals, read_header, read_tensor
from glm_engine.checkpoint.torch_file import DAMAGED_ADVICE
from glm_engine.errors import CheckpointError
from glm_engine.model.glm130b.config import CONFIG_FILE_NAME, GLMConfig
from glm_engine.model.head_fingerprint import HEADS_METADATA_KEY

WEIGHTS_FILE_NAME = "model.safetensors"
INDEX_FILE_NAME = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 4 * 2**30


def is_native_checkpoint(folder: Path) -> bool:
    return (folder / WEIGHTS_FILE_NAME).is_file() or (folder / INDEX_FILE_NAME).is_file()


class LazySafetensors(Mapping[str, torch.Tensor]):
    """A read-only mapping over one or more safetensors files: each tensor is read on access into memory of its own
    (``stream.read_tensor``: no mapped file pages stay in the resident set, and the result does not change if the
    file does), and :meth:`read_as` reads it converted, chunk by chunk, without a stored-dtype copy.

    Only one file's header is open at a time (``keys_by_file`` orders keys so each file is opened once).
    """

    def __init__(self, files: Mapping[str, Path] | Path) -> None:
        """``files``: one safetensors file, or key -> file (an index's ``weight_map``)."""
        self._file_of: dict[str, Path] = {}
        self._infos: dict[str, TensorInfo] = {}
        self._open: tuple[Path, Any] | None = None
        self._stored: dict[str, StoredTensor] = {}
        paths = [files] if isinstance(files, Path) else sorted(set(files.values()))
        for path in paths:
            handle = self._handle(path)
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key in self._file_of:
                    continue
                part = handle.get_slice(key)
                self._file_of[key] = path
                self._infos[key] = TensorInfo(tuple(part.get_shape()), DTYPES.get(part.get_dtype(), torch.uint8))
            self._stored.update({k: v for k, v in read_header(path).items() if self._file_of.get(k) == path})
        self._open = None
        if not isinstance(files, Path):
            absent = sorted(k for k, p in files.items() if self._file_of.get(k) != p)
            if absent:
                raise CheckpointError(f"{INDEX_FILE_NAME} lists keys its files do not hold: {', '.join(absent[:5])}")

    def _handle(self, path: Path) -> Any:  # safetensors' handle type is private
        if self._open is None or self._open[0] != path:
            self._open = None  # release the previous file's mapping first
            try:
                self._open = (path, safe_open(str(path), framework="pt"))
            except SafetensorError as exc:  # a header that does not parse, or does not cover the file exactly
                raise CheckpointError(f"cannot read {path}: {exc}; {DAMAGED_ADVICE}") from None
            except OSError as exc:  # missing, a folder, unreadable
                raise CheckpointError(f"cannot read {path}: {exc}") from None
        return self._open[1]

    def file_metadata(self, path: Path) -> dict[str, str]:
        """The ``__metadata__`` strings of one of the files (what ``write_native`` stored there)."""
        return dict(self._handle(path).metadata() or {})

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.read_as(key, None)

    def equals(self, key: str, tensor: torch.Tensor) -> bool:
        """Whether ``key``, converted to ``tensor``'s dtype, equals ``tensor``, compared chunk by chunk in the file."""
        stored = self._stored.get(key)
        if stored is None:
            return torch.equal(self.read_as(key, tensor.dtype), tensor)
        return equals(stored, tensor)

    def read_as(self, key: str, dtype: torch.dtype | None) -> torch.Tensor:
        """The tensor ``key`` in ``dtype`` (None: as stored), allocated once and filled from the file."""
        if key not in self._file_of:
            raise KeyError(key)
        stored = self._stored.get(key)
        if stored is None:  # a dtype torch has no name for here: safetensors' own reader, then a private copy
            tensor = self._handle(self._file_of[key]).get_tensor(key).clone()
            return tensor if dtype is None else tensor.to(dtype)
        return read_tensor(stored, dtype)

    def __contains__(self, key: object) -> bool:  # Mapping's would read the tensor
        return key in self._file_of

    def __iter__(self) -> Iterator[str]:
        return iter(self._file_of)

    def __len__(self) -> int:
        return len(self._file_of)

    def infos(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def file_of(self, key: str) -> Path:
        return self._file_of[key]

    def keys_by_file(self, keys: list[str]) -> list[str]:
        """``keys`` reordered so each file is opened once."""
        return sorted(keys, key=lambda k: (str(self._file_of.get(k, "")), keys.index(k)))


def open_native(folder: Path) -> tuple[LazySafetensors, dict[str, str]]:
    """The weights of a native checkpoint folder and the metadata written with them (the index's, or the single
    file's)."""
    index_path = folder / INDEX_FILE_NAME
    if not index_path.is_file():
        weights = LazySafetensors(folder / WEIGHTS_FILE_NAME)
        return weights, weights.file_metadata(folder / WEIGHTS_FILE_NAME)
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = {str(k): folder / str(v) for k, v in index["weight_map"].items()}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index_path} is not a safetensors index (needs a 'weight_map' object): {exc}") from None
    for path in weight_map.values():
        if path.parent != folder:
            raise CheckpointError(f"{index_path} points outside its folder: {path}")
    return LazySafetensors(weight_map), {str(k): str(v) for k, v in index.get("metadata", {}).items()}


def read_native_config(folder: Path) -> GLMConfig:
    config_path = folder / CONFIG_FILE_NAME
    if not config_path.is_file():
        raise CheckpointError(
            f"{folder} has weights but no {CONFIG_FILE_NAME}: a Hugging Face folder (ChatGLM) needs the "
            f"{CONFIG_FILE_NAME} it was released with; a GLM-130B native folder needs its {CONFIG_FILE_NAME} or "
            "--config PRESET"
        )
    return GLMConfig.from_json_file(config_path)


def write_native(
    folder: Path,
    config: GLMConfig,
    tensors: Iterable[tuple[str, torch.Tensor]],
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    metadata: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write ``(key, tensor)`` pairs as they arrive into safetensors files of at most ``max_shard_bytes`` each.

    Only one file's worth of tensors is held at a time. Files are named ``model-XXXXX.safetensors`` while writing
    and renamed to the ``-of-N`` form at the end with the index, or to ``model.safetensors`` when there is one.
    Each file is written atomically; callers wanting an all-or-nothing folder use ``atomic.staged_folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, list[str]]] = []
    pending: dict[str, torch.Tensor] = {}
    pending_bytes = 0
    # the head count is the one shape-preserving config field a wrong value of goes unnoticed: kept with the weights
    file_metadata = {"format": "pt", HEADS_METADATA_KEY: str(config.num_attention_heads), **(metadata or {})}

    def flush() -> None:
        nonlocal pending, pending_bytes
        path = folder / f"model-{len(written) + 1:05d}.safetensors"
        batch, needed = pending, pending_bytes
        write_atomically(path, lambda tmp: save_file(batch, str(tmp), metadata=file_metadata), needed)
        written.append((path, list(batch)))
        pending, pending_bytes = {}, 0

    for key, tensor in tensors:
        size = tensor.numel() * tensor.element_size()
        if pending and pending_bytes + size > max_shard_bytes:
            flush()
        pending[key] = tensor.detach().contiguous().cpu()
        pending_bytes += size
    if pending or not written:
        flush()
    final_paths = _name_shards(folder, written, file_metadata)
    write_atomically(folder / CONFIG_FILE_NAME, config.to_json_file)
    return final_paths


def _name_shards(folder: Path, written: list[tuple[Path, list[str]]], metadata: Mapping[str, str]) -> list[Path]:
    if len(written) == 1:
        final = folder / WEIGHTS_FILE_NAME
        written[0][0].replace(final)
        (folder / INDEX_FILE_NAME).unlink(missing_ok=True)
        return [final]
    total = len(written)
    weight_map, paths, size = {}, [], 0
    for number, (path, keys) in enumerate(written, start=1):
        final = folder / f"model-{number:05d}-of-{total:05d}.safetensors"
        path.replace(final)
        paths.append(final)
        size += final.stat().st_size
        weight_map.update(dict.fromkeys(keys, final.name))
    index = {"metadata": {**metadata, "total_size": str(size)}, "weight_map": weight_map}
    write_atomically(folder / INDEX_FILE_NAME, lambda tmp: tmp.write_text(json.dumps(index, indent=2) + "\n"))
    (folder / WEIGHTS_FILE_NAME).unlink(missing_ok=True)
    return paths


def save_native(
    folder: str | Path,
    config: GLMConfig,
    state_dict: Mapping[str, torch.Tensor],
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Write ``config.json`` and the weights of an in-memory state dict into ``folder``."""
    folder = Path(folder)
    write_native(folder, config, state_dict.items(), max_shard_bytes)
    return folder
