"""The reference's SwissArmyTransformer checkpoint: ``latest`` + ``<iteration>/mp_rank_XX_model_states.pt``.

Each shard is a ``torch.save`` of ``{"module": state_dict}`` (docs/glm-semantics.md#checkpoint-layout). It is read with
``weights_only=True`` (a checkpoint must never run code) and memory-mapped.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from glm_engine.checkpoint.atomic import write_atomically
from glm_engine.checkpoint.torch_file import load_torch_file
from glm_engine.errors import CheckpointError

LATEST_FILE_NAME = "latest"
SHARD_PATTERN = re.compile(r"mp_rank_(\d+)_model_states\.pt")


def is_sat_checkpoint(folder: Path) -> bool:
    """A folder with a ``latest`` file (what the reference's loader looks for first)."""
    return (folder / LATEST_FILE_NAME).is_file()


def sat_iteration_dir(folder: Path) -> Path:
    """The directory ``latest`` points at: an iteration number > 0 or the word ``release``."""
    return folder / sat_tag(folder)


def sat_tag(folder: Path) -> str:
    """The iteration tag in ``latest``, checked to name an existing directory."""
    try:
        tag = (folder / LATEST_FILE_NAME).read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise CheckpointError(f"{folder / LATEST_FILE_NAME} is not a text file") from None
    if tag != "release" and not (tag.isdigit() and int(tag) > 0):
        raise CheckpointError(
            f"{folder / LATEST_FILE_NAME} must hold an iteration number > 0 or 'release', found {tag!r}"
        )
    if tag != "release":
        tag = str(int(tag))  # SAT reads the number: "049300" means folder 49300
    directory = folder / tag
    if not directory.is_dir():
        raise CheckpointError(f"{folder / LATEST_FILE_NAME} names {tag!r} but {directory} does not exist")
    return tag


def sat_shards(folder: Path) -> list[Path]:
    """Shard files in rank order; ranks must be 0..n-1 without gaps."""
    directory = sat_iteration_dir(folder)
    shards = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := SHARD_PATTERN.fullmatch(p.name)))
    if not shards:
        raise CheckpointError(f"{directory} holds no mp_rank_XX_model_states.pt files")
    ranks = [rank for rank, _ in shards]
    if ranks != list(range(len(ranks))):
        raise CheckpointError(f"{directory} has shards for ranks {ranks}; expected 0..{len(ranks) - 1}")
    return [path for _, path in shards]


def read_sat_shard(path: Path) -> dict[str, torch.Tensor]:
    """The ``module`` state dict of one shard, loaded safely (no code execution) and memory-mapped."""
    obj = load_torch_file(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("module"), dict):
        raise CheckpointError(f"{path} is not a SAT model-states file: no 'module' state dict inside")
    return obj["module"]


def write_sat_shard(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Save ``{"module": state_dict}`` as the reference writes it, atomically (temporary name, fsync, rename)."""
    needed = sum(t.numel() * t.element_size() for t in state_dict.values() if isinstance(t, torch.Tensor))
    write_atomically(path, lambda tmp: torch.save({"module": state_dict}, tmp), needed)


def sat_shard_path(folder: Path, tag: str, rank: int) -> Path:
    return folder / tag / f"mp_rank_{rank:02d}_model_states.pt"
