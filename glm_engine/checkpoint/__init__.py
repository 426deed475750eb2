"""Reading checkpoints: the native format and the reference's SAT format, recognised by their files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from glm_engine.checkpoint.native import is_native_checkpoint, load_native, save_native
from glm_engine.checkpoint.sat import is_sat_checkpoint, load_sat
from glm_engine.config import GLMConfig
from glm_engine.errors import CheckpointError

__all__ = ["checkpoint_format", "load_checkpoint", "save_native"]


def checkpoint_format(path: Path) -> str:
    """``"native"`` or ``"sat"``, or a CheckpointError that says what a checkpoint folder must contain."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a file; pass the folder that holds it")
    if is_native_checkpoint(path):
        return "native"
    if is_sat_checkpoint(path):
        return "sat"
    raise CheckpointError(
        f"{path} is not a checkpoint: expected model.safetensors + config.json (native) or a "
        "'latest' file and an iteration folder (SAT)"
    )


def load_checkpoint(path: str | Path, config: GLMConfig | None = None) -> tuple[GLMConfig, Mapping[str, torch.Tensor]]:
    """The model config and a (possibly lazy) state dict; ``config`` overrides the checkpoint's own."""
    path = Path(path).expanduser()
    if checkpoint_format(path) == "native":
        return load_native(path, config)
    return load_sat(path, config)
