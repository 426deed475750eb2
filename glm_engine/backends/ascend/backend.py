"""Ascend backend declaration: available when ``torch_npu`` imports (CANN present) and sees an NPU.

``torch_npu`` is imported here only, on demand: without CANN it fails to import, and that failure is reported as the
reason instead of breaking ``import glm_engine``.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

from glm_engine.backends.ascend.ops import AscendOps
from glm_engine.backends.base import DeviceInfo, OpLevelBackend, Verdict
from glm_engine.ops.interface import Op, OpTable
from glm_engine.quant.formats import QuantFormat


def _import_torch_npu() -> tuple[object | None, str]:
    """The torch_npu module, or None and why not."""
    if importlib.util.find_spec("torch_npu") is None:
        return None, (
            "torch_npu is not installed (install the torch_npu wheel that matches your torch version and CANN toolkit)"
        )
    try:
        return importlib.import_module("torch_npu"), ""
    except Exception as exc:  # missing CANN libraries surface as OSError/ImportError/RuntimeError
        return None, (
            f"torch_npu is installed but failed to import ({type(exc).__name__}: {exc}); install CANN "
            "and source its set_env.sh"
        )


class AscendBackend(OpLevelBackend):
    name = "ascend"
    device_type = "npu"
    dist_backend = "hccl"
    priority = 30
    description = "Huawei Ascend NPUs through torch_npu"

    def availability(self) -> Verdict:
        module, why = _import_torch_npu()
        if module is None:
            return Verdict(False, why)
        if not torch.npu.is_available():
            return Verdict(
                False,
                "torch_npu sees no Ascend NPU (torch.npu.is_available() is False); check the "
                "driver and ASCEND_RT_VISIBLE_DEVICES",
            )
        return Verdict(True, f"{torch.npu.device_count()} NPU(s)")

    def devices(self) -> list[DeviceInfo]:
        if not self.availability():
            return []
        devices = []
        for index in range(torch.npu.device_count()):
            props = torch.npu.get_device_properties(index)
            devices.append(DeviceInfo(index, props.name, getattr(props, "total_memory", None)))
        return devices

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        bf16 = bool(self.availability()) and bool(getattr(torch.npu, "is_bf16_supported", lambda: False)())
        return (torch.float16, torch.bfloat16, torch.float32) if bf16 else (torch.float16, torch.float32)

    def support_note(self, op: Op, dtype: torch.dtype, quant_format: QuantFormat | None) -> str:
        if op is not Op.LINEAR or quant_format is None:
            return ""
        if dtype not in (torch.float16, torch.bfloat16):
            return f"dequantized per product (npu_weight_quant_batchmatmul takes fp16/bf16 activations, not {dtype})"
        note = "torch_npu.npu_weight_quant_batchmatmul"
        if quant_format in (QuantFormat.INT8_GROUPWISE, QuantFormat.INT4_GROUPWISE):
            note += " (groups a multiple of 32 columns; per-group needs Atlas A2/A3)"
        if quant_format in (QuantFormat.INT4_ROWWISE, QuantFormat.INT4_GROUPWISE):
            note += ", INT4 re-packed by npu_convert_weight_to_int4pack at load (Atlas A2/A3)"
        return note

    def op_table(self, dtype: torch.dtype, device_index: int = 0) -> OpTable:
        return AscendOps(self.device(device_index), dtype)
