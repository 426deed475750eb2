"""What the running CPU is and which one-row bf16 kernel streams fastest on it (read once from ``/proc/cpuinfo``)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
# Native bf16 dot products: with them torch's F.linear (oneDNN) reads a bf16 weight at full speed.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's ``key: value`` lines of ``/proc/cpuinfo`` ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = CPUINFO.read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model_name() -> str:
    """The CPU's model name as the kernel reports it (``platform`` elsewhere)."""
    return _cpuinfo_fields().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags the kernel reports for the CPU (empty where it reports none)."""
    return frozenset(_cpuinfo_fields().get("flags", "").split())


@functools.cache
def one_row_bf16_uses_mv() -> bool:
    """Whether a one-row bf16 product runs as ``torch.mv``/``addmv`` rather than ``F.linear``.

    Only on AVX-512 without native bf16: measured with torch 2.13.0, 2 threads, a 16384x4096 bf16 weight, ``mv`` read
    24 GB/s against ``F.linear``'s 14 on such an Intel Xeon, but 7.8 against 16.5 on an AMD EPYC with AVX512-BF16
    and 1.6 against 13 on an AVX2-only AMD EPYC (docs/benchmarking.md). Both accumulate in fp32 and round once.
    """
    avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    return avx512 and not (cpu_flags() & NATIVE_BF16_FLAGS)


def one_row_bf16_note() -> str:
    """How a batch-1 bf16 product runs here, for the load notes."""
    if one_row_bf16_uses_mv():
        return "one-row products as torch.mv/addmv (faster than F.linear on AVX-512 without native bf16)"
    return "F.linear (this CPU has native bf16 dot products or no AVX-512, where torch.mv streams slower)"
