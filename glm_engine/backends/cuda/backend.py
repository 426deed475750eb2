"""CUDA backend declaration: available when this torch is a CUDA build and sees an NVIDIA GPU.

Ops are the portable PyTorch implementations running on the GPU (cuBLAS GEMMs with fp32 accumulation, the
reference's explicit fp32-softmax attention); fused kernels replace them op by op behind the same table.
"""

from __future__ import annotations

import torch

from glm_engine.backends.base import Verdict
from glm_engine.backends.torch_cuda import TorchCudaBackend


class CudaBackend(TorchCudaBackend):
    name = "cuda"
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
