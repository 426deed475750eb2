"""Conversions: re-shard to another TP degree in the reference's SAT layout (optionally quantizing, like its
``tools/convert_tp.py``), and SAT <-> native sharded safetensors.

Every conversion fills a hidden staging folder and renames it into place at the end (``atomic.staged_folder``), so
an interrupted one never leaves a folder that looks complete. Memory: one target rank (or one output file) of
weights plus one memory-mapped source shard at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from glm_engine.checkpoint import layout, native, sat
from glm_engine.checkpoint.atomic import staged_folder, write_atomically
from glm_engine.checkpoint.reader import Checkpoint, open_checkpoint
from glm_engine.config import CONFIG_FILE_NAME, GLMConfig
from glm_engine.errors import CheckpointError
from glm_engine.model.weights import IGNORED_KEY_SUFFIXES, parameter_shapes
from glm_engine.parallel.degree import check_tp_degree
from glm_engine.quant.reference import quantize

Progress = Callable[[int, int], None]
RELEASE_TAG = "release"


def _source(input_folder: str | Path, config: GLMConfig | None) -> Checkpoint:
    checkpoint = open_checkpoint(input_folder, config)
    if checkpoint.bits is not None:
        raise CheckpointError(
            f"{checkpoint.describe()} is already quantized: its row-parallel scales belong to its TP degree, so it "
            "cannot be re-sharded or converted exactly. Convert the FP16 checkpoint instead (with "
            "--quantization-bit-width to quantize in the same step)"
        )
    return checkpoint


def _source_dtype(checkpoint: Checkpoint) -> torch.dtype:
    dtypes = {info.dtype for info in checkpoint.infos[0].values() if info.dtype.is_floating_point}
    return torch.float16 if torch.float16 in dtypes or not dtypes else sorted(dtypes, key=str)[0]


def _passthrough(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """Recomputed buffers the reference keeps in its files (``rotary_emb.inv_freq``), copied from the first shard."""
    keys = [k for k in checkpoint.infos[0] if k.endswith(IGNORED_KEY_SUFFIXES)]
    if not keys:
        return {}
    with checkpoint.open_shard(0) as shard:
        return {k: shard[k].clone() for k in keys}


def convert_tp(
    input_folder: str | Path,
    output_folder: str | Path,
    target_tp: int,
    bits: int | None = None,
    config: GLMConfig | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write the checkpoint at TP ``target_tp`` in the reference's SAT layout (``latest``, ``<iter>/mp_rank_XX``).

    With ``bits`` (4 or 8) the four linears per layer are quantized on each rank's local shard exactly as the
    reference does, adding ``*_scale`` keys; INT4 is packed two per byte, high nibble = even column. A
    ``config.json`` is written beside ``latest`` (the reference ignores it; glm-engine reads it).
    """
    checkpoint = _source(input_folder, config)
    check_tp_degree(checkpoint.config, target_tp, checkpoint.describe())
    dtype, extra = _source_dtype(checkpoint), _passthrough(checkpoint)
    tag = checkpoint.iteration or RELEASE_TAG
    keys = list(parameter_shapes(checkpoint.config))
    with staged_folder(output_folder) as staging:
        (staging / tag).mkdir()
        for rank in range(target_tp):
            state = checkpoint.rank_state_dict(rank, target_tp, dtype, "cpu", _offset(progress, rank, target_tp))
            if bits is not None:
                state = _quantized(state, bits)
            state.update(extra)
            sat.write_sat_shard(sat.sat_shard_path(staging, tag, rank), {k: state[k] for k in _ordered(state, keys)})
            del state
        write_atomically(staging / sat.LATEST_FILE_NAME, lambda tmp: tmp.write_text(tag + "\n"))
        write_atomically(staging / CONFIG_FILE_NAME, checkpoint.config.to_json_file)
    return Path(output_folder)


def _quantized(state: dict[str, torch.Tensor], bits: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state.items():
        if layout.is_quantized_key(key):
            out[key], out[key + layout.SCALE_SUFFIX] = quantize(tensor, bits)
        else:
            out[key] = tensor
    return out


def _ordered(state: dict[str, torch.Tensor], keys: list[str]) -> list[str]:
    """Model keys in the reference's order, each weight followed by its scale, then the rest."""
    ordered = []
    for key in keys:
        ordered.append(key)
        if key + layout.SCALE_SUFFIX in state:
            ordered.append(key + layout.SCALE_SUFFIX)
    return ordered + [k for k in state if k not in set(ordered)]


def _offset(progress: Progress | None, part: int, parts: int) -> Progress | None:
    """Report part ``part`` of ``parts`` equal parts as one continuous bar."""
    if progress is None:
        return None
    return lambda done, total: progress(part * total + done, parts * total)


def convert_to_native(
    input_folder: str | Path,
    output_folder: str | Path,
    config: GLMConfig | None = None,
    max_shard_bytes: int = native.DEFAULT_SHARD_BYTES,
    progress: Progress | None = None,
) -> Path:
    """Merge any SAT checkpoint into the native format (TP=1 layout, sharded safetensors + index + config.json).

    Each output file is assembled from the source shards one shard at a time, so host RAM holds one output file
    of weights plus one memory-mapped source shard.
    """
    checkpoint = _source(input_folder, config)
    dtype = _source_dtype(checkpoint)
    shapes = parameter_shapes(checkpoint.config)
    batches = _batches(shapes, dtype, max_shard_bytes)
    done_before = 0

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        nonlocal done_before
        for batch in batches:
            merged = checkpoint.rank_state_dict(0, 1, dtype, "cpu", None, keys=batch)
            yield from merged.items()
            done_before += len(batch)
            if progress is not None:
                progress(done_before, len(shapes))

    with staged_folder(output_folder) as staging:
        native.write_native(staging, checkpoint.config, tensors(), max_shard_bytes, {"source": checkpoint.describe()})
    return Path(output_folder)


def _batches(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, max_bytes: int) -> list[list[str]]:
    """Keys grouped into runs of at most ``max_bytes`` (one output file each)."""
    batches: list[list[str]] = [[]]
    size, item = 0, torch.empty((), dtype=dtype).element_size()
    for key, shape in shapes.items():
        nbytes = item * math.prod(shape)
        if batches[-1] and size + nbytes > max_bytes:
            batches.append([])
            size = 0
        batches[-1].append(key)
        size += nbytes
    return batches
