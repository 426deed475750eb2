"""The reference's SwissArmyTransformer checkpoint: ``latest`` + ``<iteration>/mp_rank_XX_model_states.pt``.

Each shard is a ``torch.save`` of ``{"module": state_dict}`` (glm130b.md section 2.1). It is read with
``weights_only=True`` (a checkpoint must never run code) and memory-mapped.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from glm_engine.config import CONFIG_FILE_NAME, GLMConfig
from glm_engine.errors import CheckpointError

LATEST_FILE_NAME = "latest"
SHARD_PATTERN = re.compile(r"mp_rank_(\d+)_model_states\.pt$")


def is_sat_checkpoint(folder: Path) -> bool:
    return (folder / LATEST_FILE_NAME).is_file()


def sat_iteration_dir(folder: Path) -> Path:
    """The directory ``latest`` points at: an iteration number > 0 or the word ``release``."""
    try:
        tag = (folder / LATEST_FILE_NAME).read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise CheckpointError(f"{folder / LATEST_FILE_NAME} is not a text file") from None
    if tag != "release" and not (tag.isdigit() and int(tag) > 0):
        raise CheckpointError(
            f"{folder / LATEST_FILE_NAME} must hold an iteration number > 0 or 'release', found {tag!r}"
        )
    directory = folder / tag
    if not directory.is_dir():
        raise CheckpointError(f"{folder / LATEST_FILE_NAME} names {tag!r} but {directory} does not exist")
    return directory


def sat_shards(folder: Path) -> list[Path]:
    """Shard files in rank order; ranks must be 0..n-1 without gaps."""
    directory = sat_iteration_dir(folder)
    shards = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := SHARD_PATTERN.search(p.name)))
    if not shards:
        raise CheckpointError(f"{directory} holds no mp_rank_XX_model_states.pt files")
    ranks = [rank for rank, _ in shards]
    if ranks != list(range(len(ranks))):
        raise CheckpointError(f"{directory} has shards for ranks {ranks}; expected 0..{len(ranks) - 1}")
    return [path for _, path in shards]


def read_sat_shard(path: Path) -> dict[str, torch.Tensor]:
    """The ``module`` state dict of one shard, loaded safely (no code execution) and memory-mapped."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) files cannot be mapped
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers, so it is refused "
            f"(a checkpoint must not run code): {exc}"
        ) from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("module"), dict):
        raise CheckpointError(f"{path} is not a SAT model-states file: no 'module' state dict inside")
    return obj["module"]


def load_sat(folder: Path, config: GLMConfig | None) -> tuple[GLMConfig, dict[str, torch.Tensor]]:
    """Config (``config.json`` beside ``latest``, else the given one) and the state dict of a TP=1 checkpoint."""
    config_path = folder / CONFIG_FILE_NAME
    if config is None:
        if not config_path.is_file():
            raise CheckpointError(
                f"SAT checkpoint {folder} has no {CONFIG_FILE_NAME} next to '{LATEST_FILE_NAME}'; "
                "pass --config PRESET (e.g. --config glm-130b) or write one"
            )
        config = GLMConfig.from_json_file(config_path)
    shards = sat_shards(folder)
    if len(shards) > 1:
        raise CheckpointError(
            f"{folder} has {len(shards)} tensor-parallel shards; this version loads single-shard "
            "(TP=1) SAT checkpoints only"
        )
    return config, read_sat_shard(shards[0])
