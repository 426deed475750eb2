"""ROCm / Hygon DCU backend declaration: available when this torch is a HIP build and sees a device.

A ROCm build of torch (AMD) or a DTK build (Hygon DCU) exposes its GPUs through the ``torch.cuda`` API with
``torch.version.hip`` set; collectives go through RCCL under the ``nccl`` process-group name.
"""

from __future__ import annotations

import torch

from glm_engine.backends.base import DeviceInfo, OpLevelBackend, Verdict
from glm_engine.backends.torch_cuda_devices import all_devices_support_bf16, list_torch_cuda_devices
from glm_engine.ops.interface import OpTable
from glm_engine.ops.torch_ops import TorchOps


class RocmDcuBackend(OpLevelBackend):
    name = "rocm_dcu"
    device_type = "cuda"  # HIP devices appear as torch "cuda" devices
    dist_backend = "nccl"  # RCCL answers to the nccl name in ROCm builds of torch
    priority = 30
    description = "AMD Instinct / Hygon DCU through a ROCm (DTK) build of torch"

    def availability(self) -> Verdict:
        if not torch.version.hip:
            return Verdict(
                False,
                "this torch build has no ROCm/HIP support (torch.version.hip is None); install "
                "a ROCm build of torch (AMD) or the DTK build (Hygon DCU)",
            )
        if not torch.cuda.is_available():
            return Verdict(
                False,
                "torch (HIP) sees no GPU (torch.cuda.is_available() is False); check the "
                "amdgpu/DCU driver and HIP_VISIBLE_DEVICES",
            )
        return Verdict(True, f"{torch.cuda.device_count()} HIP device(s), HIP {torch.version.hip}")

    def devices(self) -> list[DeviceInfo]:
        return list_torch_cuda_devices() if self.availability() else []

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        if self.availability() and all_devices_support_bf16():
            return (torch.float16, torch.bfloat16, torch.float32)
        return (torch.float16, torch.float32)

    def op_table(self, dtype: torch.dtype, device_index: int = 0) -> OpTable:
        return TorchOps(self.device(device_index), dtype)
