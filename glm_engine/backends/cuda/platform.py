"""What the NVIDIA stack says about itself, read without creating a device context: the kernel driver's version
(from the file the driver publishes), a device's architecture name (``sm_XY``), whether every device has bf16, and
which devices this process holds a context on (asked of the driver library, for ``tools/device_check.sh``).

The ``cuda`` backend (``backend.py``) answers the shared base's override points
(``backends/torch_cuda/backend.py``) with these.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path
from typing import Any

import torch

NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")  # written by the NVIDIA kernel module on Linux
BF16_MIN_CAPABILITY = (8, 0)  # Ampere (sm_80): the first NVIDIA architecture with native bf16 arithmetic
LIBCUDA = "libcuda.so.1"  # the driver API library the NVIDIA driver installs on Linux
CUDA_SUCCESS = 0  # CUresult of a call that succeeded


def parse_nvidia_driver_version(text: str) -> str:
    """The driver version from ``/proc/driver/nvidia/version`` ("NVRM version: ... Kernel Module  550.54.14 ...")."""
    match = re.search(r"Kernel Module(?: for [\w-]+)?\s+(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else ""


def nvidia_driver_version(path: Path = NVIDIA_DRIVER_FILE) -> str:
    """The NVIDIA kernel driver's version; "" when the file is missing or unreadable."""
    try:
        return parse_nvidia_driver_version(path.read_text()) if path.is_file() else ""
    except OSError:
        return ""


def sm_name(props: Any) -> str:
    """``sm_90`` for a device of compute capability 9.0 (``torch.cuda.get_device_properties``)."""
    return f"sm_{props.major}{props.minor}"


def all_devices_support_bf16() -> bool:
    """bf16 needs compute capability >= 8.0 on every visible device."""
    return all(torch.cuda.get_device_capability(i) >= BF16_MIN_CAPABILITY for i in range(torch.cuda.device_count()))


def primary_context_devices(driver: Any = None) -> list[int] | None:
    """The visible devices on which this process holds an active CUDA primary context, asked of the driver without
    creating one; None where the driver library cannot be loaded or answers with an error.

    CUDA Driver API, "Primary Context Management": ``cuDevicePrimaryCtxGetState(dev, &flags, &active)`` reports
    whether ``dev``'s primary context (the one the runtime, so torch, uses) is active; ``cuInit``,
    ``cuDeviceGetCount`` and ``cuDeviceGet`` need no context. Device ordinals follow CUDA_VISIBLE_DEVICES as torch's
    do. ``driver`` stands in for ``libcuda`` in tests.
    """
    if driver is None:
        try:
            driver = ctypes.CDLL(LIBCUDA)
        except OSError:
            return None
    count, device, flags, active = ctypes.c_int(), ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()
    if driver.cuInit(0) != CUDA_SUCCESS or driver.cuDeviceGetCount(ctypes.byref(count)) != CUDA_SUCCESS:
        return None
    found = []
    for ordinal in range(count.value):
        if driver.cuDeviceGet(ctypes.byref(device), ordinal) != CUDA_SUCCESS:
            return None
        if driver.cuDevicePrimaryCtxGetState(device, ctypes.byref(flags), ctypes.byref(active)) != CUDA_SUCCESS:
            return None
        if active.value:
            found.append(ordinal)
    return found
