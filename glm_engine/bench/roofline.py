"""The memory roofline of decode: achieved GB/s of weights against the read bandwidth measured on the same device.

A decode step reads every weight once, so ``weight bytes / seconds per step`` is the bandwidth decode achieves; its
share of what the device can read says how close decode is to the memory bound. The bandwidth is measured, not
looked up: a spec sheet says nothing about this machine's threads, NUMA placement or clocks.

One kernel is not a ceiling: on a CPU a reduction (``x.sum()``) can read slower than the matrix-vector product
decode itself runs, and a model smaller than the last-level cache is served from it. So the probe takes the best of
several read kernels (a fp32 sum, a copy counting the bytes read and written, and a one-row GEMV in each dtype the
rows use, counting the matrix), each over a buffer at least ``CACHE_MULTIPLE`` times the last-level cache (and at
least ``MIN_CPU_PROBE_BYTES`` on the CPU), best of a few passes; a row whose weights fit in that cache gets no share
("n/a (in cache)"), and a share above 100% is flagged.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from glm_engine.backends.base import parse_dtype
from glm_engine.bench.device import synchronize

BANDWIDTH_BUFFER_GIB = 1.0
BANDWIDTH_REPEATS = 5
CACHE_MULTIPLE = 8  # the probe's buffer is at least this many times the last-level cache
MIN_CPU_PROBE_BYTES = 512 * 2**20
SLOW_PASS_S = 1.0  # a kernel whose warm-up pass takes longer is timed once (a slow kernel is no ceiling anyway)
GEMV_COLUMNS = 4096
GB = 1e9  # decimal gigabytes, as memory bandwidth is quoted
CPU_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
IN_CACHE = "n/a (in cache)"
ABOVE_ROOFLINE = "above the measured bandwidth"


@dataclass
class Bandwidth:
    """The measured read bandwidth: the best kernel's GB/s and name, every kernel's GB/s, the probe's buffer size
    and the last-level cache it was sized against (None when unknown)."""

    gbps: float
    kernel: str
    kernels: dict[str, float] = field(default_factory=dict)
    buffer_bytes: int = 0
    cache_bytes: int | None = None


def parse_size(text: str) -> int | None:
    """``266240K``, ``32M``, ``1G`` or plain bytes (sysfs and lscpu spellings) -> bytes; None when unreadable."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, re.IGNORECASE)
    if match is None:
        return None
    return int(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2).upper()]


def cpu_last_level_cache_bytes(cache_dir: Path = CPU_CACHE_DIR) -> int | None:
    """The size of the highest-level data/unified cache of cpu0 (sysfs; ``lscpu`` where sysfs has none)."""
    best: tuple[int, int] | None = None
    for index in sorted(cache_dir.glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = parse_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind != "Instruction" and size and (best is None or level > best[0]):
            best = (level, size)
    if best is not None:
        return best[1]
    try:
        done = subprocess.run(["lscpu", "-B", "-C=LEVEL,ONE-SIZE"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    sizes = [line.split() for line in done.stdout.splitlines()[1:] if len(line.split()) == 2]
    levels = [(int(level), int(size)) for level, size in sizes if level.isdigit() and size.isdigit()]
    return max(levels)[1] if levels else None


def last_level_cache_bytes(device: torch.device) -> int | None:
    """The last-level cache in front of ``device``'s memory: the CPU's L3 (or L2), a CUDA device's L2."""
    if device.type == "cpu":
        return cpu_last_level_cache_bytes()
    if device.type == "cuda":
        return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", None) or None
    return None


def probe_bytes(gib: float, cache_bytes: int | None, device_type: str) -> int:
    """The probe's buffer: ``gib`` GiB, raised to ``CACHE_MULTIPLE`` x the last-level cache, and on the CPU to
    ``MIN_CPU_PROBE_BYTES``."""
    size = int(gib * 2**30)
    if cache_bytes:
        size = max(size, CACHE_MULTIPLE * cache_bytes)
    if device_type == "cpu":
        size = max(size, MIN_CPU_PROBE_BYTES)
    return size


def _best_gbps(run: Callable[[], object], nbytes: int, device: torch.device, repeats: int) -> float:
    """GB/s of the fastest timed pass of ``run`` moving ``nbytes``, after one untimed pass (page faults, kernel
    selection); one timed pass only when the untimed one was slow."""
    best, passes = 0.0, repeats
    for index in range(passes + 1):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        seconds = time.perf_counter() - start
        if index == 0 and seconds > SLOW_PASS_S:
            passes = 1
        elif index:
            best = max(best, nbytes / seconds / GB)
        if index >= passes:
            break
    return best


def best_kernel(kernels: dict[str, float]) -> tuple[str, float]:
    """The kernel that read fastest, and its GB/s."""
    name = max(kernels, key=lambda k: kernels[k])
    return name, kernels[name]


# Each kernel allocates its buffers in its own frame, so only one kernel's memory is held at a time.


def _sum_gbps(size: int, device: torch.device, repeats: int) -> float:
    x = torch.ones(size // 4, device=device)
    return _best_gbps(x.sum, x.nbytes, device, repeats)


def _copy_gbps(size: int, device: torch.device, repeats: int) -> float:
    """A copy between two halves of the buffer, counting the bytes read and those written."""
    source = torch.ones(size // 8, device=device)
    target = torch.empty_like(source)
    return _best_gbps(lambda: target.copy_(source), 2 * source.nbytes, device, repeats)


def _gemv_gbps(size: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """One row times the matrix (``linear``, as a decode step multiplies), counting the matrix's bytes."""
    matrix = torch.ones(size // (GEMV_COLUMNS * dtype.itemsize), GEMV_COLUMNS, dtype=dtype, device=device)
    vector = torch.ones(1, GEMV_COLUMNS, dtype=dtype, device=device)
    return _best_gbps(lambda: torch.nn.functional.linear(vector, matrix), matrix.nbytes, device, repeats)


def measure_read_bandwidth(
    device: torch.device,
    gib: float = BANDWIDTH_BUFFER_GIB,
    dtypes: Sequence[str] = ("fp32",),
    repeats: int = BANDWIDTH_REPEATS,
) -> Bandwidth:
    """The best read bandwidth of a sum, a copy and a GEMV per dtype over a buffer well above the cache."""
    cache = last_level_cache_bytes(device)
    size = probe_bytes(gib, cache, device.type)
    kernels = {
        "sum fp32": _sum_gbps(size, device, repeats),
        "copy (read + write)": _copy_gbps(size, device, repeats),
    }
    for name in dict.fromkeys(dtypes):
        kernels[f"gemv {name}"] = _gemv_gbps(size, parse_dtype(name), device, repeats)
    kernel, gbps = best_kernel(kernels)
    return Bandwidth(gbps, kernel, kernels, size, cache)


def achieved_gbps(weight_bytes: int, seconds_per_step: float) -> float:
    """GB/s of weights a decode step streams: every weight once per step."""
    if seconds_per_step <= 0:
        raise ValueError("a step takes a positive time")
    return weight_bytes / seconds_per_step / GB


def cached_bytes_per_token(layers: int, kv_heads: int, head_dim: int, itemsize: int) -> int:
    """Bytes of keys and values one cached token holds per batch row: K and V of every layer over the key/value heads
    held (a grouped-query model caches its groups, not one head per query head), ``head_dim`` wide."""
    return 2 * layers * kv_heads * head_dim * itemsize


def roofline_share(gbps: float, bandwidth_gbps: float) -> float:
    """The fraction of the measured read bandwidth that ``gbps`` reaches (1.0 = at the roofline)."""
    if bandwidth_gbps <= 0:
        raise ValueError("the bandwidth must be positive")
    return gbps / bandwidth_gbps


def share_or_note(
    weight_bytes: int, gbps: float, bandwidth_gbps: float, cache_bytes: int | None
) -> tuple[float | None, str]:
    """The roofline share of a decode row and its note: none when the weights fit in the last-level cache (they
    are then read from it, not from memory: ``IN_CACHE``); ``ABOVE_ROOFLINE`` when the share exceeds 1."""
    if cache_bytes and weight_bytes < cache_bytes:
        return None, IN_CACHE
    share = roofline_share(gbps, bandwidth_gbps)
    return share, ABOVE_ROOFLINE if share > 1 else ""
