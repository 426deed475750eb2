"""The memory roofline of decode: achieved GB/s of weights against the read bandwidth measured on the same device.

A decode step reads every weight once, so ``weight bytes / seconds per step`` is the bandwidth decode achieves; its
share of what the device can read (a large reduction timed in this process, best of a few) says how close decode is
to the memory bound. The bandwidth is measured, not looked up: a spec sheet says nothing about this machine's
threads, NUMA placement or clocks, and llama.cpp users are told to compare against measured numbers.
"""

from __future__ import annotations

import time

import torch

from glm_engine.bench.device import synchronize

# A buffer far larger than any cache (last-level caches reach ~1 GiB only on the largest server CPUs' V-cache).
BANDWIDTH_BUFFER_GIB = 1.0
BANDWIDTH_REPEATS = 5
GB = 1e9  # decimal gigabytes, as memory bandwidth is quoted


def measure_read_bandwidth(
    device: torch.device, gib: float = BANDWIDTH_BUFFER_GIB, repeats: int = BANDWIDTH_REPEATS
) -> float:
    """Read bandwidth in GB/s: a sum over ``gib`` GiB of fp32 ones, best of ``repeats`` after one warm-up."""
    x = torch.ones(int(gib * 2**30) // 4, device=device)
    best = 0.0
    for index in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        x.sum()
        synchronize(device)
        if index:  # the first pass pays for page faults and kernel selection
            best = max(best, x.nbytes / (time.perf_counter() - start) / GB)
    del x
    return best


def achieved_gbps(weight_bytes: int, seconds_per_step: float) -> float:
    """GB/s of weights a decode step streams: every weight once per step."""
    if seconds_per_step <= 0:
        raise ValueError("a step takes a positive time")
    return weight_bytes / seconds_per_step / GB


def roofline_share(gbps: float, bandwidth_gbps: float) -> float:
    """The fraction of the measured read bandwidth that ``gbps`` reaches (1.0 = at the roofline)."""
    if bandwidth_gbps <= 0:
        raise ValueError("the bandwidth must be positive")
    return gbps / bandwidth_gbps
