"""ROCm / Hygon DCU backend declaration: available when this torch is a HIP build and sees a device.

A ROCm build of torch (AMD) or a DTK build (Hygon DCU) exposes its GPUs through the ``torch.cuda`` API with
``torch.version.hip`` set; collectives go through RCCL under the ``nccl`` process-group name. Which vendor and family
each device is comes from its gfx architecture name (:mod:`.arch`), and decides the op table's attention path
(:mod:`.ops`).
"""

from __future__ import annotations

import torch

from glm_engine.backends.base import Verdict
from glm_engine.backends.rocm_dcu.arch import describe
from glm_engine.backends.rocm_dcu.ops import RocmOps
from glm_engine.backends.torch_cuda import TorchCudaBackend


class RocmDcuBackend(TorchCudaBackend):
    name = "rocm_dcu"
    priority = 30
    description = "AMD Instinct / Hygon DCU through a ROCm (DTK) build of torch"
    ops_class = RocmOps

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
