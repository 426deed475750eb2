"""glm-engine's native checkpoint: ``config.json`` + ``model.safetensors`` with the reference's key names.

Loading memory-maps the safetensors file, so host RAM holds a tensor only while it is converted to the run dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from glm_engine.checkpoint.atomic import write_atomically
from glm_engine.config import CONFIG_FILE_NAME, GLMConfig
from glm_engine.errors import CheckpointError

WEIGHTS_FILE_NAME = "model.safetensors"
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "I32": torch.int32,
    "I64": torch.int64,
}


def is_native_checkpoint(folder: Path) -> bool:
    return (folder / WEIGHTS_FILE_NAME).is_file()


def save_native(folder: str | Path, config: GLMConfig, state_dict: Mapping[str, torch.Tensor]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder`` (each atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    write_atomically(folder / WEIGHTS_FILE_NAME, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    write_atomically(folder / CONFIG_FILE_NAME, config.to_json_file)
    return folder


class LazySafetensors(Mapping[str, torch.Tensor]):
    """A read-only mapping over a safetensors file: tensors are read (memory-mapped) on access."""

    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            self._file = safe_open(str(path), framework="pt")
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"cannot read {path}: {exc}") from None
        self._keys = list(self._file.keys())
        slices = {k: self._file.get_slice(k) for k in self._keys}
        self._shapes = {k: tuple(s.get_shape()) for k, s in slices.items()}
        self._dtypes = {k: _SAFETENSORS_DTYPES.get(s.get_dtype(), torch.uint8) for k, s in slices.items()}

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._shapes:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def dtype(self, key: str) -> torch.dtype:
        return self._dtypes[key]


def load_native(folder: Path, config: GLMConfig | None = None) -> tuple[GLMConfig, LazySafetensors]:
    """The config (``config.json`` unless one is given) and a lazy view of the weights."""
    if config is None:
        config_path = folder / CONFIG_FILE_NAME
        if not config_path.is_file():
            raise CheckpointError(
                f"{folder} has {WEIGHTS_FILE_NAME} but no {CONFIG_FILE_NAME}; write one or pass --config PRESET"
            )
        config = GLMConfig.from_json_file(config_path)
    return config, LazySafetensors(folder / WEIGHTS_FILE_NAME)
