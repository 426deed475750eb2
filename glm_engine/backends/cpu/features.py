"""What the running CPU is (read once from ``/proc/cpuinfo``): its model name and flags, which key the measured
kernel choices (``kernel_trial``) and name the CPU beside every number reported."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# The flags that decide which kernels are fast (vector width, native bf16/fp16 and int8 dot products), shown beside
# every measured number.
KERNEL_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "avx_vnni", "amx_bf16")


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


def kernel_flags() -> str:
    """The ``KERNEL_FLAGS`` this CPU has, space-separated ("none of ..." where it has none)."""
    present = [flag for flag in KERNEL_FLAGS if flag in cpu_flags()]
    return " ".join(present) or f"none of {' '.join(KERNEL_FLAGS)}"
