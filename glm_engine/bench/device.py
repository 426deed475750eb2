"""Device-side helpers of the measurements: synchronisation, timers and peak memory, for any torch device.

Accelerators are reached through their torch module by device type (``torch.cuda`` for CUDA and ROCm, ``torch.npu``
once torch_npu is imported), using only the API those modules document: ``synchronize``, ``Event(enable_timing=
True)`` with ``record``/``elapsed_time``, ``reset_peak_memory_stats`` and ``max_memory_allocated``. The host's peak
resident memory comes from Linux's ``VmHWM``, which ``/proc/self/clear_refs`` resets per measurement; elsewhere the
process-lifetime peak from ``resource`` is reported instead (and said so in ``host_peak_note``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_RESET_PEAK_RSS = "5"  # proc(5): writing 5 to clear_refs resets the peak resident set size (VmHWM)


def _module(device: torch.device) -> ModuleType | None:
    """The torch module of an accelerator (``torch.cuda``, ``torch.npu``), None for the CPU."""
    if device.type == "cpu":
        return None
    return getattr(torch, device.type, None)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device``, so host clocks measure finished work."""
    module = _module(device)
    if module is not None:
        module.synchronize(device)


class Timer:
    """Seconds of the work between ``start()`` and ``stop()`` on a device: device events where the device has them
    (the time between two points of the stream, free of host jitter), a synchronised host clock on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        module = _module(device)
        event = getattr(module, "Event", None) if module is not None else None
        self._events = (event(enable_timing=True), event(enable_timing=True)) if event is not None else None
        self._start = 0.0

    @property
    def kind(self) -> str:
        return f"{self.device.type} events" if self._events is not None else "host clock (perf_counter)"

    def start(self) -> None:
        if self._events is not None:
            self._events[0].record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> float:
        """Seconds since ``start()``, once the device has finished the work."""
        if self._events is not None:
            self._events[1].record()
            self._events[1].synchronize()
            return self._events[0].elapsed_time(self._events[1]) / 1e3  # elapsed_time is in milliseconds
        return time.perf_counter() - self._start


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes; None without procfs."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _vm_hwm_bytes() -> int | None:
    return _status_bytes("VmHWM:")


def host_resident_bytes() -> int | None:
    """The process's resident set now (Linux ``VmRSS``); None where procfs has no such field."""
    return _status_bytes("VmRSS:")


# The process's VmHWM as it stood before each MemoryTracker reset: the process peak (loading included) survives the
# per-measurement resets.
_peak_before_resets = 0


def process_peak_bytes() -> int | None:
    """The process's peak resident set since it started, loading included, across ``MemoryTracker`` resets (Linux
    ``VmHWM``; elsewhere ``resource.getrusage``, which no reset touches); None where neither exists."""
    now = _vm_hwm_bytes()
    if now is None:
        return _max_rss_bytes()
    return max(now, _peak_before_resets)


def _max_rss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    kib_or_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib_or_bytes if sys.platform == "darwin" else kib_or_bytes * 1024


def host_peak_note() -> str:
    """How the host peak is measured here."""
    process = (
        "; peak RSS MB: the measuring process's peak resident set so far, loading included (the process that ran "
        "the point; points measured in one process show its peak up to each)"
    )
    if _CLEAR_REFS.exists() and _vm_hwm_bytes() is not None:
        return "host MB: peak resident set size per measurement (VmHWM, reset through /proc/self/clear_refs)" + process
    return "host MB: peak resident set size of the whole process so far (resource.getrusage)" + process


class MemoryTracker:
    """Peak host and device memory over one measurement: ``reset()`` before, ``host_peak()`` / ``device_peak()``
    after (bytes; None where the device keeps no statistics)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        global _peak_before_resets
        _peak_before_resets = max(_peak_before_resets, _vm_hwm_bytes() or 0)
        with contextlib.suppress(OSError):  # no procfs (macOS) or not allowed: host_peak() gives the lifetime peak
            _CLEAR_REFS.write_text(_RESET_PEAK_RSS)
        module = _module(self.device)
        if module is not None and hasattr(module, "reset_peak_memory_stats"):
            module.reset_peak_memory_stats(self.device)

    def host_peak(self) -> int | None:
        peak = _vm_hwm_bytes()
        return peak if peak is not None else _max_rss_bytes()

    def device_peak(self) -> int | None:
        module = _module(self.device)
        if module is None or not hasattr(module, "max_memory_allocated"):
            return None
        return int(module.max_memory_allocated(self.device))
