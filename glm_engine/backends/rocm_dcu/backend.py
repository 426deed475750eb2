"""ROCm / Hygon DCU backend declaration: available when this torch is a HIP build and sees a device.

A ROCm build of torch (AMD) or a DTK build (Hygon DCU) exposes its GPUs through the ``torch.cuda`` API with
``torch.version.hip`` set; collectives go through RCCL under the ``nccl`` process-group name. Devices, dtypes and the
op table come from the shared ``torch.cuda`` base (``backends/torch_cuda/``); this class answers its vendor
questions: which vendor and family each device is comes from its gfx architecture name (:mod:`.arch`), which also
decides bf16 (``torch.cuda.is_bf16_supported()`` is True on every HIP build, gfx906 included, which has no bf16
arithmetic), whether the Triton kernels compile for the device and the op table's attention path (:mod:`.ops`); the
driver version is the ROCm amdgpu module's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from glm_engine.backends.base import Verdict
from glm_engine.backends.rocm_dcu.arch import base_arch, bf16_reason, describe
from glm_engine.backends.rocm_dcu.ops import RocmOps, rocm_triton_verdict
from glm_engine.backends.torch_cuda.backend import TorchCudaBackend
from glm_engine.ops.interface import Op
from glm_engine.quant.formats import QuantFormat

AMDGPU_DRIVER_FILE = Path("/sys/module/amdgpu/version")  # set by the out-of-tree (ROCm) amdgpu module only


class RocmDcuBackend(TorchCudaBackend):
    name = "rocm_dcu"
    priority = 30
    description = "AMD Instinct / Hygon DCU through a ROCm (DTK) build of torch"
    ops_class = RocmOps
    compute_units = "CUs"

    def availability(self) -> Verdict:
        if not torch.version.hip:
            return Verdict(
                False,
                "this torch build has no ROCm/HIP support (torch.version.hip is None); install a ROCm build of "
                "torch (AMD) or the DTK build (Hygon DCU)",
            )
        if not torch.cuda.is_available():
            return Verdict(
                False,
                "torch (HIP) sees no GPU (torch.cuda.is_available() is False); check the amdgpu/DCU driver and "
                "HIP_VISIBLE_DEVICES",
            )
        kinds = sorted(
            {
                describe(getattr(p, "gcnArchName", ""), p.name)
                for p in (torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count()))
            }
        )
        return Verdict(True, f"{torch.cuda.device_count()} HIP device(s) ({'; '.join(kinds)}), HIP {torch.version.hip}")

    def device_capability(self, props: Any) -> str:
        """The gfx target without its feature flags (``gfx90a``); the raw name when it is not a gfx target."""
        name = getattr(props, "gcnArchName", "")
        return base_arch(name) or name

    def describe_device(self, props: Any) -> str:
        """``gfx90a, AMD Instinct MI200 (CDNA2)``: the arch with the vendor and family it stands for."""
        return describe(getattr(props, "gcnArchName", ""), props.name)

    def driver_version(self) -> str:
        try:
            return AMDGPU_DRIVER_FILE.read_text().strip() if AMDGPU_DRIVER_FILE.is_file() else ""
        except OSError:
            return ""

    def runtime_version(self) -> str:
        return f"HIP {torch.version.hip}"

    def device_archs(self) -> list[tuple[str, str]]:
        """``(gcnArchName, name)`` of every visible device (asked only once the backend is available)."""
        props = (torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count()))
        return [(getattr(p, "gcnArchName", ""), p.name) for p in props]

    def bf16_verdict(self) -> Verdict:
        """bf16 where every visible device has bf16 arithmetic by its architecture (``arch.has_bf16``)."""
        refused = [why for arch, name in self.device_archs() if (why := bf16_reason(arch, name))]
        return Verdict(not refused, "; ".join(dict.fromkeys(refused)))

    def bf16_supported(self) -> bool:
        return bool(self.bf16_verdict())

    def supports(self, op: Op, dtype: torch.dtype, quant_format: QuantFormat | str | None = None) -> Verdict:
        """The shared answer, except that a refused bf16 says which device lacks it and to use fp16."""
        if dtype == torch.bfloat16 and self.availability() and not (verdict := self.bf16_verdict()):
            return Verdict(False, f"{self.name} does not compute in bf16: {verdict.reason}")
        return super().supports(op, dtype, quant_format)

    def support_note(self, op: Op, dtype: torch.dtype, quant_format: QuantFormat | None) -> str:
        """The shared note, except that quantized linears on an arch Triton does not compile for are dequantized per
        product, and say why."""
        if op is Op.LINEAR and quant_format is not None and self.availability():
            verdict = rocm_triton_verdict(*self.device_archs()[0])
            if not verdict:
                return f"dequantized to {dtype} per product ({verdict.reason})"
        return super().support_note(op, dtype, quant_format)
