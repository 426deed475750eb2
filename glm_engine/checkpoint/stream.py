"""Reading a safetensors tensor straight into its final place: one allocation in the dtype the model runs in, filled
from the file in bounded chunks (``docs/checkpoints.md#memory``).

Why not keep safetensors' memory-mapped tensors: pages of a mapped file that a conversion or a finiteness check
touches count in the process's resident set until the whole mapping goes, so a model converted from one file held
that file's pages plus the converted weights (about twice the weights at the peak); and a same-dtype tensor kept as a
view of the mapping would change, or fault, if the file were rewritten while the model runs. ``os.pread`` puts the
bytes through the page cache, which the kernel reclaims and which is not the process's memory, so the peak of
loading is the weights plus one chunk.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from glm_engine.errors import CheckpointError

# One staging buffer's size when a tensor is converted while read: large enough that reads run at disk/page-cache
# speed, small beside any model (the peak of loading is the weights plus the part of it a tensor touches). Always
# allocated whole and above glibc's largest dynamic mmap threshold (32 MiB): it is then mapped and unmapped on its own,
# never carved from the heap, whose holes kept ~0.45 GiB resident after loading an 8-layer ChatGLM-6B-shaped model
# when the buffer was sized to each tensor (pages of it a small tensor never touches cost nothing).
CHUNK_BYTES = 64 * 2**20
_HEADER_LENGTH = struct.Struct("<Q")  # safetensors: an 8-byte little-endian header length, then the JSON header
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's bytes lie in a safetensors file (absolute offsets), and what they hold."""

    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def read_header(path: Path) -> dict[str, StoredTensor]:
    """Every tensor of a safetensors file with its byte range; tensors of a dtype torch lacks are left out (the
    caller reads those through safetensors). The header was validated by ``safe_open`` before this is called."""
    with path.open("rb") as handle:
        (length,) = _HEADER_LENGTH.unpack(handle.read(_HEADER_LENGTH.size))
        header = json.loads(handle.read(length))
    base = _HEADER_LENGTH.size + length
    out = {}
    for key, entry in header.items():
        if key == "__metadata__" or entry.get("dtype") not in DTYPES:
            continue
        start, end = entry["data_offsets"]
        out[key] = StoredTensor(path, DTYPES[entry["dtype"]], tuple(entry["shape"]), base + start, base + end)
    return out


def read_tensor(stored: StoredTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``stored`` as a new tensor of ``dtype`` (default: as stored), owned by the process: read in place when the
    dtypes agree, else through one staging chunk converted into the result row block by row block."""
    dtype = dtype or stored.dtype
    result = torch.empty(stored.shape, dtype=dtype)
    if result.numel() == 0:
        return result
    flat = result.view(-1)
    with stored.path.open("rb", buffering=0) as handle:
        if dtype == stored.dtype:
            _read_exactly(handle.fileno(), _bytes_of(flat), stored.start, stored.path)
            return result
        step = max(1, CHUNK_BYTES // stored.dtype.itemsize)
        staging = torch.empty(step, dtype=stored.dtype)
        for first in range(0, flat.numel(), step):
            piece = staging[: min(step, flat.numel() - first)]
            _read_exactly(handle.fileno(), _bytes_of(piece), stored.start + first * stored.dtype.itemsize, stored.path)
            flat[first : first + piece.numel()].copy_(piece)
    return result


def equals(stored: StoredTensor, tensor: torch.Tensor) -> bool:
    """Whether ``stored``, converted to ``tensor``'s dtype, equals ``tensor`` (a CPU tensor), compared chunk by chunk:
    a tied copy in the file (ChatGLM-6B's ``lm_head``) is recognised without being read into memory of its own."""
    if stored.shape != tuple(tensor.shape) or tensor.device.type != "cpu":
        return False
    flat = tensor.reshape(-1)
    step = CHUNK_BYTES // stored.dtype.itemsize
    staging = torch.empty(step if flat.numel() else 0, dtype=stored.dtype)
    with stored.path.open("rb", buffering=0) as handle:
        for first in range(0, flat.numel(), step):
            piece = staging[: min(step, flat.numel() - first)]
            _read_exactly(handle.fileno(), _bytes_of(piece), stored.start + first * stored.dtype.itemsize, stored.path)
            if not torch.equal(piece.to(tensor.dtype), flat[first : first + piece.numel()]):
                return False
    return True


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous tensor's memory (any dtype, bfloat16 included)."""
    return memoryview(tensor.view(torch.uint8).numpy()).cast("B")


def _read_exactly(fd: int, target: memoryview, offset: int, path: Path) -> None:
    done = 0
    while done < len(target):
        got = os.preadv(fd, [target[done:]], offset + done)
        if got <= 0:
            raise CheckpointError(f"{path} ended while a tensor was read from it: the file changed or was truncated")
        done += got
