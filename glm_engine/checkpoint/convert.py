"""Conversions: re-shard to another TP degree in the reference's SAT layout (optionally quantizing, like its
``tools/convert_tp.py``), SAT <-> native sharded safetensors, and quantizing into the native format.

Every conversion fills a hidden staging folder and renames it into place at the end (``atomic.staged_folder``), so
an interrupted one never leaves a folder that looks complete. Memory: one target rank (or one output file) of
weights plus one memory-mapped source shard at a time.
"""

from __future__ import annotations

import functools
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from glm_engine.checkpoint import layout, native, sat
from glm_engine.checkpoint.atomic import staged_folder, write_atomically
from glm_engine.checkpoint.reader import Checkpoint, open_checkpoint
from glm_engine.checkpoint.space import check_space
from glm_engine.errors import CheckpointError
from glm_engine.model.glm130b.config import CONFIG_FILE_NAME, GLMConfig
from glm_engine.model.glm130b.weights import is_quantized_key, parameter_shapes
from glm_engine.parallel.degree import check_tp_degree
from glm_engine.quant.reference import quantize
from glm_engine.quant.spec import QuantSpec
from glm_engine.quant.weight import QuantizedWeight

Progress = Callable[[int, int], None]
RELEASE_TAG = "release"
# Files that travel with the weights: the tokenizer model a checkpoint folder may hold, and licence texts.
SIDECAR_PATTERNS = ("ice_text.model", "tokenizer_config.json", "NOTICE*", "LICENSE*", "README*")


def _copy_sidecars(source: Path, destination: Path) -> None:
    for pattern in SIDECAR_PATTERNS:
        for path in source.glob(pattern):
            if path.is_file():
                write_atomically(destination / path.name, functools.partial(shutil.copyfile, path), path.stat().st_size)


def _check_output_space(checkpoint: Checkpoint, output_folder: str | Path, bits: int | None) -> None:
    """Refuse before writing when the output's file system cannot hold it (weights at their stored or quantized
    width; scales and sidecars are small enough to leave to the check while writing)."""
    total = 0
    for key, shape in parameter_shapes(checkpoint.config).items():
        count = math.prod(shape)
        quantized = bits is not None and is_quantized_key(key)
        total += count * bits // 8 if quantized else count * checkpoint.dtype_of(key).itemsize
    check_space(Path(output_folder), total, "the output of this conversion")


def _source(input_folder: str | Path, config: GLMConfig | None) -> Checkpoint:
    checkpoint = open_checkpoint(input_folder, config)
    if checkpoint.bits is not None:
        raise CheckpointError(
            f"{checkpoint.describe()} is already quantized: its row-parallel scales belong to its TP degree, so it "
            "cannot be re-sharded or converted exactly. Convert the FP16 checkpoint instead (with "
            "--quantization-bit-width to quantize in the same step)"
        )
    return checkpoint


def _passthrough(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """Keys the model does not use (``rotary_emb.inv_freq`` buffers, extras outside ``transformer.``), copied
    unchanged from the first shard holding each, as the reference's convert_tp.py copies replicated keys."""
    remaining, out = set(checkpoint.unused_keys), {}
    for rank, infos in enumerate(checkpoint.infos):
        wanted = sorted(k for k in remaining if k in infos)
        if wanted:
            with checkpoint.open_shard(rank) as shard:
                out.update({k: shard[k].clone() for k in wanted})
            remaining -= set(wanted)
    return out


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
    _check_output_space(checkpoint, output_folder, bits)
    extra = _passthrough(checkpoint)
    tag = checkpoint.iteration or RELEASE_TAG
    keys = list(parameter_shapes(checkpoint.config))
    with staged_folder(output_folder, markers=(sat.LATEST_FILE_NAME,)) as staging:
        (staging / tag).mkdir()
        for rank in range(target_tp):
            state = checkpoint.rank_state_dict(rank, target_tp, None, "cpu", _offset(progress, rank, target_tp))
            if bits is not None:
                _quantize_in_place(state, bits)
            state.update(extra)
            sat.write_sat_shard(sat.sat_shard_path(staging, tag, rank), {k: state[k] for k in _ordered(state, keys)})
            del state
        # no newline: the reference's convert_tp.py uses the file's text unstripped as a folder name
        write_atomically(staging / sat.LATEST_FILE_NAME, lambda tmp: tmp.write_text(tag))
        write_atomically(staging / CONFIG_FILE_NAME, checkpoint.config.to_json_file)
        _copy_sidecars(checkpoint.path, staging)
    return Path(output_folder)


def _quantize_in_place(state: dict[str, torch.Tensor], bits: int) -> None:
    """Replace each of the four linears per layer by its quantized form and ``_scale``, one at a time (so the fp16
    and quantized copies of the whole rank never coexist)."""
    for key in [k for k in state if is_quantized_key(k)]:
        state[key], state[key + layout.SCALE_SUFFIX] = quantize(state[key], bits)


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
    quant: QuantSpec | None = None,
) -> Path:
    """Merge any SAT checkpoint into the native format (TP=1 layout, sharded safetensors + index + config.json),
    optionally quantizing its linears (``glm-engine quantize``).

    Each output file is assembled from the source shards one shard at a time, so host RAM holds one output file
    of weights plus one memory-mapped source shard. Quantized linears are stored as the reference stores them
    (int8 values, INT4 packed two per byte) with ``_scale`` keys: ``[out]`` rowwise, ``[out, in/group]`` groupwise.
    """
    checkpoint = _source(input_folder, config)
    shapes = parameter_shapes(checkpoint.config)
    sizes = {k: math.prod(shape) * checkpoint.dtype_of(k).itemsize for k, shape in shapes.items()}
    batches = _batches(sizes, max_shard_bytes)
    _check_output_space(checkpoint, output_folder, None if quant is None else quant.bits)
    done_before = 0

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        nonlocal done_before
        for batch in batches:
            merged = checkpoint.rank_state_dict(0, 1, None, "cpu", None, keys=batch, quant=quant)
            for key, value in merged.items():
                if isinstance(value, QuantizedWeight):
                    yield key, value.stored
                    yield key + layout.SCALE_SUFFIX, value.scale[:, 0] if value.groups == 1 else value.scale
                else:
                    yield key, value
            done_before += len(batch)
            if progress is not None:
                progress(done_before, len(shapes))

    markers = (native.INDEX_FILE_NAME, native.WEIGHTS_FILE_NAME)
    metadata = {"source": checkpoint.describe()}
    if quant is not None:
        metadata["quantization"] = quant.describe()
    with staged_folder(output_folder, markers) as staging:
        native.write_native(staging, checkpoint.config, tensors(), max_shard_bytes, metadata)
        _copy_sidecars(checkpoint.path, staging)
    return Path(output_folder)


def _batches(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Keys grouped into runs of at most ``max_bytes`` (one output file each)."""
    batches: list[list[str]] = [[]]
    total = 0
    for key, nbytes in sizes.items():
        if batches[-1] and total + nbytes > max_bytes:
            batches.append([])
            total = 0
        batches[-1].append(key)
        total += nbytes
    return batches
