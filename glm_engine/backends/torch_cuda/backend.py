"""The backend class the ``torch.cuda`` backends (``backends/cuda/``, ``backends/rocm_dcu/``) share.

Both see devices through the same API and build the same kind of op table (:class:`TorchCudaOps`: SDPA and a Triton
decode kernel for attention, Triton dequant-GEMM kernels for quantized weights; Triton compiles for NVIDIA and AMD
alike). They differ in how they decide they are available (a CUDA build vs a HIP build of torch) and in the vendor
facts this class leaves to them: how a device's architecture is named and described, the driver and runtime
versions, bf16 support, and the op table class (its attention policy and Triton launch settings).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch

from glm_engine.backends.base import DeviceInfo, OpLevelBackend
from glm_engine.backends.torch_cuda.attention import REPEATED, AttentionPath
from glm_engine.backends.torch_cuda.ops import GROUPED_IN_PLACE, TorchCudaOps
from glm_engine.kernels.triton import triton_verdict
from glm_engine.kernels.triton.linear import ACTIVATION_DTYPES
from glm_engine.ops.interface import Op, OpTable
from glm_engine.quant.formats import QuantFormat


def free_memory_bytes(index: int, total: int, own: int | None) -> int | None:
    """Free bytes on device ``index`` (``total`` bytes), creating a context on no device but ``own``.

    ``cudaMemGetInfo`` (``torch.cuda.mem_get_info``) needs a context on the device it asks about, and the CUDA
    runtime creates one on first need (CUDA Runtime API, "Interactions with the CUDA Driver API": the primary
    context is initialised at the first call that requires an active context). A context holds about half a GiB
    and, under the EXCLUSIVE_PROCESS compute mode, cannot be had on a device another process uses; so only this
    process's own device is asked that way. For the others, ``total`` minus ``torch.cuda.device_memory_used``
    (what NVML or amdsmi reports as used, as nvidia-smi/amd-smi show it; no context) is the estimate; it needs
    nvidia-ml-py (pynvml) or amdsmi installed, and without them, or on a torch too old to have it, the value is
    unknown (None).
    """
    if index == own:
        try:
            return torch.cuda.mem_get_info(index)[0]
        except RuntimeError:  # the device is held by another process (EXCLUSIVE_PROCESS) or the driver refused
            return None
    used_of = getattr(torch.cuda, "device_memory_used", None)  # absent from older torch releases
    if used_of is None:
        return None
    try:
        used = int(used_of(index))
    except Exception:  # no pynvml/amdsmi (ModuleNotFoundError), or the library's own errors (NVMLError ...)
        return None
    return max(0, total - used)


# How each attention path reads grouped key/value heads (backends/torch_cuda/attention.py).
GROUPED_READS = {
    AttentionPath.TRITON_DECODE: GROUPED_IN_PLACE,
    AttentionPath.SDPA: (
        "grouped heads read in place (enable_gqa) where one of this torch's fused SDPA kernels takes them with GLM's "
        f"mask (asked of torch per call), else {REPEATED}"
    ),
    AttentionPath.REFERENCE: REPEATED,
}


class TorchCudaBackend(OpLevelBackend):
    """Devices, dtypes and ops of a ``torch.cuda`` backend; subclasses say when they are available, set
    ``ops_class`` and name their devices (the abstract methods below)."""

    device_type = "cuda"
    dist_backend = "nccl"  # RCCL answers to this name in ROCm builds of torch
    ops_class: ClassVar[type[TorchCudaOps]]  # the vendor's op table (attention policy, Triton platform)
    compute_units: ClassVar[str] = "SMs"  # what the vendor calls ``multi_processor_count`` ("CUs" on AMD)

    # --- vendor facts: override in the backend's own folder ---

    @abstractmethod
    def device_capability(self, props: Any) -> str:
        """The architecture as the vendor names it (``sm_90``, ``gfx90a``) from ``torch.cuda.get_device_properties``."""

    def describe_device(self, props: Any) -> str:
        """The first part of a device's line in ``glm-engine backends``; the architecture name unless overridden."""
        return self.device_capability(props)

    def driver_version(self) -> str:
        """The GPU kernel driver's version as the driver publishes it; "" when it cannot be read."""
        return ""

    @abstractmethod
    def runtime_version(self) -> str:
        """The runtime this torch was built against (``"CUDA 12.4"``, ``"HIP 6.2.41133"``)."""

    def bf16_supported(self) -> bool:
        """Whether every visible device computes in bf16 (asked only once the backend is available)."""
        return torch.cuda.is_bf16_supported()

    # --- shared behaviour ---

    def device_info(self, index: int, versions: str, own: int | None = None) -> DeviceInfo:
        """Name, total/free memory, architecture and unit count of device ``index``; ``versions`` ends the line.

        ``own`` is this process's device, the only one whose free memory may be read through a context
        (:func:`free_memory_bytes`); the properties come from ``cudaGetDeviceProperties``, which needs none.
        """
        props = torch.cuda.get_device_properties(index)
        free = free_memory_bytes(index, props.total_memory, own)
        detail = f"{self.describe_device(props)}, {props.multi_processor_count} {self.compute_units}, {versions}"
        return DeviceInfo(index, props.name, props.total_memory, detail, free, self.device_capability(props))

    def devices(self) -> list[DeviceInfo]:
        """Each visible device with its driver/runtime versions (empty when unavailable).

        Creates no context on any device but this process's own (``torch.cuda.current_device()``: the rank's
        device after ``set_device``, device 0 otherwise), whose free memory ``cudaMemGetInfo`` reads; the others'
        free memory comes from NVML/amdsmi where installed, else is unknown (:func:`free_memory_bytes`). Never
        called at import or by ``availability()``; a launcher and a rank count devices with :meth:`device_count`.
        """
        if not self.availability():
            return []
        driver = self.driver_version()
        versions = ", ".join(v for v in (f"driver {driver}" if driver else "", self.runtime_version()) if v)
        own = torch.cuda.current_device()
        return [self.device_info(index, versions, own) for index in range(torch.cuda.device_count())]

    def device_count(self) -> int:
        """Visible devices, counted without a context: ``torch.cuda.device_count()`` asks NVML (amdsmi on ROCm)
        where it can, else ``cudaGetDeviceCount``, which initialises the driver but creates no context."""
        return torch.cuda.device_count() if self.availability() else 0

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        if self.availability() and self.bf16_supported():
            return (torch.float16, torch.bfloat16, torch.float32)
        return (torch.float16, torch.float32)

    def attention_note(self, dtype: torch.dtype) -> str:
        """How attention runs on device 0 in ``dtype`` (the policy of the op table this backend would build)."""
        device = self.device(0) if self.availability() else torch.device("cpu")
        policy = self.ops_class(device, dtype).policy
        decode, why = policy.choose(1, 128, dtype)
        return f"prefill: {policy.prefill.value} ({policy.prefill_reason}); decode: {decode.value} ({why})"

    def grouped_attention_note(self, dtype: torch.dtype) -> str:
        """How grouped key/value heads are read on device 0 in ``dtype``, per phase (``TorchCudaOps.attention``)."""
        device = self.device(0) if self.availability() else torch.device("cpu")
        policy = self.ops_class(device, dtype).policy
        parts = []
        for phase, sq in (("prefill", 128), ("decode", 1)):
            path, _ = policy.choose(sq, 128, dtype)
            parts.append(f"{phase}: {path.value}, {GROUPED_READS[path]}")
        return "; ".join(parts)

    def support_note(self, op: Op, dtype: torch.dtype, quant_format: QuantFormat | None) -> str:
        if op is Op.ATTENTION:
            return self.attention_note(dtype)
        if op is Op.GROUPED_ATTENTION:
            return self.grouped_attention_note(dtype)
        if op in (Op.RMSNORM, Op.SWIGLU):
            return "portable PyTorch ops (no fused kernel on this backend)"
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
