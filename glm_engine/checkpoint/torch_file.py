"""Reading ``torch.save`` files safely: ``weights_only=True`` (a checkpoint must never run code) and memory-mapped."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from glm_engine.errors import CheckpointError


def load_torch_file(path: Path) -> object:
    """The unpickled content of ``path``: tensors and plain containers only, memory-mapped (legacy non-zip files,
    which cannot be mapped, are read whole). Anything else is refused with a CheckpointError."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers, so it is refused "
            f"(a checkpoint must not run code); re-save it as a plain state dict or as safetensors: {exc}"
        ) from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
