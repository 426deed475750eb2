"""CPU backend declaration: always available, fp32/bf16/fp16, gloo for tensor parallelism."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from glm_engine.backends.base import DeviceInfo, OpLevelBackend, Verdict
from glm_engine.backends.cpu.ops import CpuOps
from glm_engine.ops.interface import Op, OpTable
from glm_engine.quant.formats import QuantFormat


def _cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class CpuBackend(OpLevelBackend):
    name = "cpu"
    device_type = "cpu"
    dist_backend = "gloo"
    priority = 0
    description = "PyTorch on the CPU; the reference implementation"

    def availability(self) -> Verdict:
        return Verdict(True, "always available")

    def devices(self) -> list[DeviceInfo]:
        detail = f"{torch.get_num_threads()} threads, {os.cpu_count()} logical cores"
        return [DeviceInfo(0, _cpu_model_name(), _total_memory_bytes(), detail)]

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        return (torch.float32, torch.bfloat16, torch.float16)

    def support_note(self, op: Op, dtype: torch.dtype, quant_format: QuantFormat | None) -> str:
        if op is Op.LINEAR and quant_format is not None:
            return super().support_note(op, dtype, quant_format)
        if dtype == torch.float16 and op is Op.LINEAR:
            return "prefill-sized products computed in fp32 and rounded to fp16 (torch's CPU fp16 GEMM is slow)"
        if op is Op.ATTENTION:
            return "explicit reference path" if dtype == torch.float16 else "scaled_dot_product_attention"
        return ""

    def op_table(self, dtype: torch.dtype, device_index: int = 0) -> OpTable:
        return CpuOps(torch.device("cpu"), dtype)
