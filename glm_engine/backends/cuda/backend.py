"""The CUDA backend: available when this torch is a CUDA build and sees an NVIDIA GPU.

Devices, dtypes, support notes and the op table come from the shared ``torch.cuda`` base
(``backends/torch_cuda/``); this class says when CUDA is available and answers the base's vendor questions from
:mod:`.platform` (``sm_XY`` names, the NVIDIA driver's version, bf16 from compute capability 8.0). Its op table is
:class:`~glm_engine.backends.cuda.ops.CudaOps`.
"""

from __future__ import annotations

from typing import Any

import torch

from glm_engine.backends.base import Verdict
from glm_engine.backends.cuda.ops import CudaOps
from glm_engine.backends.cuda.platform import all_devices_support_bf16, nvidia_driver_version, sm_name
from glm_engine.backends.torch_cuda.backend import TorchCudaBackend


class CudaBackend(TorchCudaBackend):
    name = "cuda"
    priority = 30
    description = "NVIDIA GPUs through torch CUDA"
    ops_class = CudaOps

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

    def device_capability(self, props: Any) -> str:
        return sm_name(props)

    def driver_version(self) -> str:
        return nvidia_driver_version()

    def runtime_version(self) -> str:
        return f"CUDA {torch.version.cuda}"

    def bf16_supported(self) -> bool:
        return all_devices_support_bf16()
