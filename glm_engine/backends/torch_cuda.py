"""What the backends that reach their GPUs through ``torch.cuda`` share: CUDA, and ROCm/DCU via HIP.

Both see devices through the same API and run the same op table (:class:`CudaOps`: SDPA and a Triton decode kernel for
attention, Triton dequant-GEMM kernels for quantized weights; Triton compiles for NVIDIA and AMD alike); they differ
in how they decide they are available (a CUDA build vs a HIP build of torch), in how they name a device's
architecture, and in the op table's attention policy and Triton launch settings (``rocm_dcu.ops.RocmOps``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from glm_engine.backends.base import DeviceInfo, OpLevelBackend
from glm_engine.backends.torch_cuda_ops import CudaOps
from glm_engine.kernels.triton import triton_verdict
from glm_engine.kernels.triton.linear import ACTIVATION_DTYPES
from glm_engine.ops.interface import Op, OpTable
from glm_engine.quant.formats import QuantFormat

NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")  # written by the NVIDIA kernel module on Linux
AMDGPU_DRIVER_FILE = Path("/sys/module/amdgpu/version")  # set by the out-of-tree (ROCm) amdgpu module only


def parse_nvidia_driver_version(text: str) -> str:
    """The driver version from ``/proc/driver/nvidia/version`` ("NVRM version: ... Kernel Module  550.54.14 ...")."""
    match = re.search(r"Kernel Module(?: for [\w-]+)?\s+(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else ""


def driver_version() -> str:
    """The GPU kernel driver's version, read from the file the driver itself publishes; "" when there is none."""
    try:
        if torch.version.hip:
            return AMDGPU_DRIVER_FILE.read_text().strip() if AMDGPU_DRIVER_FILE.is_file() else ""
        return parse_nvidia_driver_version(NVIDIA_DRIVER_FILE.read_text()) if NVIDIA_DRIVER_FILE.is_file() else ""
    except OSError:
        return ""


def runtime_version() -> str:
    """``"CUDA 12.4"`` or ``"HIP 6.2.41133"``: the runtime this torch was built against."""
    return f"HIP {torch.version.hip}" if torch.version.hip else f"CUDA {torch.version.cuda}"


def device_capability(props: object) -> str:
    """``sm_XY`` on NVIDIA; the gfx target (``gfx90a``, without feature flags) under HIP."""
    if torch.version.hip:
        from glm_engine.backends.rocm_dcu.arch import base_arch

        name = getattr(props, "gcnArchName", "")
        return base_arch(name) or name
    return f"sm_{props.major}{props.minor}"  # type: ignore[attr-defined]


def list_torch_cuda_devices() -> list[DeviceInfo]:
    """Name, total/free memory, architecture, SM/CU count and driver/runtime versions of each visible device.

    Free memory comes from ``torch.cuda.mem_get_info``, which creates a context on each device: this is for
    ``glm-engine backends`` and diagnostics, never called at import or by ``availability()``.
    """
    devices = []
    versions = ", ".join(v for v in (f"driver {driver_version()}" if driver_version() else "", runtime_version()) if v)
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        try:
            free, _total = torch.cuda.mem_get_info(index)
        except RuntimeError:
            free = None
        capability = device_capability(props)
        units = "CUs" if torch.version.hip else "SMs"
        detail = f"{capability}, {props.multi_processor_count} {units}, {versions}"
        if torch.version.hip:
            from glm_engine.backends.rocm_dcu.arch import describe

            detail = f"{describe(getattr(props, 'gcnArchName', ''), props.name)}, {detail.split(', ', 1)[1]}"
        devices.append(DeviceInfo(index, props.name, props.total_memory, detail, free, capability))
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
    ops_class: type[CudaOps] = CudaOps

    def devices(self) -> list[DeviceInfo]:
        return list_torch_cuda_devices() if self.availability() else []

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        if self.availability() and all_devices_support_bf16():
            return (torch.float16, torch.bfloat16, torch.float32)
        return (torch.float16, torch.float32)

    def attention_note(self, dtype: torch.dtype) -> str:
        """How attention runs on device 0 in ``dtype`` (the policy of the op table this backend would build)."""
        device = self.device(0) if self.availability() else torch.device("cpu")
        policy = self.ops_class(device, dtype).policy
        decode, why = policy.choose(1, 128, dtype)
        return f"prefill: {policy.prefill.value} ({policy.prefill_reason}); decode: {decode.value} ({why})"

    def support_note(self, op: Op, dtype: torch.dtype, quant_format: QuantFormat | None) -> str:
        if op is Op.ATTENTION:
            return self.attention_note(dtype)
        if op is not Op.LINEAR or quant_format is None:
            return ""
        ok, why = triton_verdict()
        if not ok:
            return f"dequantized to {dtype} per product ({why})"
        if dtype not in ACTIVATION_DTYPES:
            return f"dequantized per product (the Triton kernels take fp16/bf16 activations, not {dtype})"
        return "fused Triton dequant-GEMM (groupwise: groups a multiple of 16 columns for INT8, 32 for INT4)"

    def op_table(self, dtype: torch.dtype, device_index: int = 0) -> OpTable:
        return self.ops_class(self.device(device_index), dtype)
