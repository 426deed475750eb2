"""CUDA backend declaration: available when this torch is a CUDA build and sees an NVIDIA GPU.

Ops are the portable PyTorch implementations running on the GPU (cuBLAS GEMMs with fp32 accumulation, the
reference's explicit fp32-softmax attention); fused kernels replace them op by op behind the same table.
"""

from __future__ import annotations

import torch

from glm_engine.backends.base import DeviceInfo, OpLevelBackend, Verdict
from glm_engine.backends.torch_cuda_devices import all_devices_support_bf16, list_torch_cuda_devices
from glm_engine.ops.interface import OpTable
from glm_engine.ops.torch_ops import TorchOps


class CudaBackend(OpLevelBackend):
    name = "cuda"
    device_type = "cuda"
    dist_backend = "nccl"
    priority = 30
    description = "NVIDIA GPUs through torch CUDA"

    def availability(self) -> Verdict:
        if torch.version.hip:
            return Verdict(False, "this torch is a ROCm/HIP build, not CUDA; use --backend rocm_dcu")
        if torch.version.cuda is None:
            return Verdict(
                False,
                "this torch build has no CUDA support (torch.version.cuda is None); install a CUDA build of torch",
            )
        if not torch.cuda.is_available():
            return Verdict(
                False,
                "torch has no CUDA device (torch.cuda.is_available() is False); "
                "check the NVIDIA driver and CUDA_VISIBLE_DEVICES",
            )
        return Verdict(True, f"{torch.cuda.device_count()} CUDA device(s), CUDA {torch.version.cuda}")

    def devices(self) -> list[DeviceInfo]:
        return list_torch_cuda_devices() if self.availability() else []

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        if self.availability() and all_devices_support_bf16():
            return (torch.float16, torch.bfloat16, torch.float32)
        return (torch.float16, torch.float32)

    def op_table(self, dtype: torch.dtype, device_index: int = 0) -> OpTable:
        return TorchOps(self.device(device_index), dtype)
