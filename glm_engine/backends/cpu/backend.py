"""CPU backend declaration: always available, fp32/bf16/fp16, gloo for tensor parallelism."""

from __future__ import annotations

import os

import torch

from glm_engine.backends.base import DeviceInfo, OpLevelBackend, Verdict
from glm_engine.backends.cpu import int_dot
from glm_engine.backends.cpu.features import cpu_model_name, kernel_flags
from glm_engine.backends.cpu.kernel_chooser import cached_summary, linear_note
from glm_engine.backends.cpu.ops import CpuOps
from glm_engine.backends.cpu.quant_linear import CPU_QUANT_FORMATS, INT_DOT_FORMATS
from glm_engine.ops.interface import Op, OpTable
from glm_engine.ops.torch_ops import sdpa_takes_enable_gqa
from glm_engine.quant.formats import QuantFormat


def _total_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# How each quantized format runs (glm_engine/backends/cpu/quant_linear.py); the kernels are fast only in bf16.
_QUANT_NOTES = {
    QuantFormat.INT8_ROWWISE: "torch _weight_int8pack_mm in bf16",
    QuantFormat.INT8_GROUPWISE: (
        "torch _weight_int4pack_mm_for_cpu in bf16 on the two 4-bit halves of each value (other group sizes than "
        "multiples of 32: dequantized per product)"
    ),
    QuantFormat.INT4_ROWWISE: "torch _weight_int4pack_mm_for_cpu in bf16 (the row scale repeated per group)",
    QuantFormat.INT4_GROUPWISE: (
        "torch _weight_int4pack_mm_for_cpu in bf16 (other group sizes than multiples of 32: dequantized per product)"
    ),
}

# Said without building anything: the kernel is built when the first such weight loads, else torch's kernels run.
_INT_DOT_NOTE = (
    f"{int_dot.SWITCH_VARIABLE}=1: integer dot-product kernel (int8 activations per block of 32, VNNI; compiled at "
    "first use where a C++ compiler is present, else torch's weight-only kernels)"
)


def grouped_attention_note(dtype: torch.dtype) -> str:
    """How grouped key/value heads are read in ``dtype`` (``CpuOps.attention``)."""
    if dtype == torch.float16:
        return "explicit reference path: the key/value heads are repeated for their query heads (a copy)"
    if not sdpa_takes_enable_gqa():
        return f"key/value heads repeated (a copy): torch {torch.__version__}'s SDPA has no enable_gqa (torch 2.5+)"
    return "scaled_dot_product_attention(enable_gqa=True): grouped heads read in place"


class CpuBackend(OpLevelBackend):
    name = "cpu"
    device_type = "cpu"
    dist_backend = "gloo"
    priority = 0
    description = "PyTorch on the CPU; the reference implementation"

    def availability(self) -> Verdict:
        return Verdict(True, "always available")

    def devices(self) -> list[DeviceInfo]:
        detail = (
            f"{torch.get_num_threads()} threads, {os.cpu_count()} logical cores, {kernel_flags()}; {cached_summary()}"
        )
        return [DeviceInfo(0, cpu_model_name(), _total_memory_bytes(), detail)]

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        return (torch.float32, torch.bfloat16, torch.float16)

    def quant_formats(self) -> tuple[QuantFormat, ...]:
        return CPU_QUANT_FORMATS

    def support_note(self, op: Op, dtype: torch.dtype, quant_format: QuantFormat | None) -> str:
        if op is Op.LINEAR and quant_format is not None:
            if quant_format in INT_DOT_FORMATS and int_dot.requested():
                return _INT_DOT_NOTE
            return _QUANT_NOTES[quant_format] + (
                "" if dtype == torch.bfloat16 else "; activations rounded to bf16 for the product, result cast back"
            )
        if op is Op.LINEAR:
            return linear_note()
        if op is Op.ATTENTION:
            return "explicit reference path" if dtype == torch.float16 else "scaled_dot_product_attention"
        if op is Op.GROUPED_ATTENTION:
            return grouped_attention_note(dtype)
        return ""

    def op_table(self, dtype: torch.dtype, device_index: int = 0) -> OpTable:
        return CpuOps(torch.device("cpu"), dtype)
