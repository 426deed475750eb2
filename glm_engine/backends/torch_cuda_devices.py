"""Device listing shared by the backends that reach their GPUs through ``torch.cuda`` (CUDA, and ROCm/DCU via HIP)."""

from __future__ import annotations

import torch

from glm_engine.backends.base import DeviceInfo


def list_torch_cuda_devices() -> list[DeviceInfo]:
    """Name, memory and architecture of each visible ``torch.cuda`` device."""
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        arch = getattr(props, "gcnArchName", "") if torch.version.hip else f"sm_{props.major}{props.minor}"
        devices.append(DeviceInfo(index, props.name, props.total_memory, arch))
    return devices


def all_devices_support_bf16() -> bool:
    """bf16 needs compute capability >= 8.0 on NVIDIA; ``torch.cuda.is_bf16_supported`` answers for the current one."""
    if torch.version.hip:
        return torch.cuda.is_bf16_supported()
    return all(torch.cuda.get_device_capability(i) >= (8, 0) for i in range(torch.cuda.device_count()))
