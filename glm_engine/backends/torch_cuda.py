"""What the backends that reach their GPUs through ``torch.cuda`` share: CUDA, and ROCm/DCU via HIP.

Both see devices through the same API and run the same ops (the portable ones, plus Triton dequant-GEMM kernels for
quantized weights: Triton compiles for NVIDIA and AMD alike); they differ only in how they decide they are available
(a CUDA build vs a HIP build of torch).
"""

from __future__ import annotations

import torch

from glm_engine.backends.base import DeviceInfo, OpLevelBackend
from glm_engine.backends.torch_cuda_ops import CudaOps
from glm_engine.kernels.triton import triton_verdict
from glm_engine.kernels.triton.linear import ACTIVATION_DTYPES
from glm_engine.ops.interface import Op, OpTable
from glm_engine.quant.formats import QuantFormat


def list_torch_cuda_devices() -> list[DeviceInfo]:
    """Name, memory and architecture (``sm_XY``, or the gfx name under HIP) of each visible device."""
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        arch = getattr(props, "gcnArchName", "") if torch.version.hip else f"sm_{props.major}{props.minor}"
        devices.append(DeviceInfo(index, props.name, props.total_memory, arch))
    return devices


def all_devices_support_bf16() -> bool:
    """bf16 needs compute capability >= 8.0 on NVIDIA; under HIP ``torch.cuda.is_bf16_supported`` answers."""
    if torch.version.hip:
        return torch.cuda.is_bf16_supported()
    return all(torch.cuda.get_device_capability(i) >= (8, 0) for i in range(torch.cuda.device_count()))


class TorchCudaBackend(OpLevelBackend):
    """Devices, dtypes and ops of a ``torch.cuda`` backend; subclasses say when they are available."""

    device_type = "cuda"
    dist_backend = "nccl"  # RCCL answers to this name in ROCm builds of torch

    def devices(self) -> list[DeviceInfo]:
        return list_torch_cuda_devices() if self.availability() else []

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        if self.availability() and all_devices_support_bf16():
            return (torch.float16, torch.bfloat16, torch.float32)
        return (torch.float16, torch.float32)

    def support_note(self, op: Op, dtype: torch.dtype, quant_format: QuantFormat | None) -> str:
        if op is not Op.LINEAR or quant_format is None:
            return ""
        ok, why = triton_verdict()
        if not ok:
            return f"dequantized to {dtype} per product ({why})"
        if dtype not in ACTIVATION_DTYPES:
            return f"dequantized per product (the Triton kernels take fp16/bf16 activations, not {dtype})"
        return "fused Triton dequant-GEMM (groupwise: groups a multiple of 16 columns for INT8, 32 for INT4)"

    def op_table(self, dtype: torch.dtype, device_index: int = 0) -> OpTable:
        return CudaOps(self.device(device_index), dtype)
