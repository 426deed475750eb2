"""The CUDA op table: the shared ``torch.cuda`` op table with NVIDIA's attention policy and ``cuda`` Triton settings.

Prefill attention goes to torch SDPA wherever torch CUDA runs, on kernels named explicitly: the memory-efficient
kernel (it takes GLM's bool mask), and cuDNN attention only when ``GLM_ENGINE_SDPA_CUDNN=1`` asks for it (its masked
attention has known defects on H100/H200; ``backends/torch_cuda/attention.py`` says which). One-row decode attention
goes to the Triton split-K kernel where triton imports, else to SDPA as well. The machinery
(paths, reasons, the SDPA call) is shared with ``rocm_dcu`` in ``backends/torch_cuda/attention.py``.
"""

from __future__ import annotations

from glm_engine.backends.torch_cuda.attention import (
    TRITON_DECODE_REASON,
    AttentionPath,
    AttentionPolicy,
    sdpa_kernels,
    sdpa_reason,
)
from glm_engine.backends.torch_cuda.ops import TorchCudaOps
from glm_engine.kernels.triton import triton_verdict


def cuda_policy(triton_ok: bool, triton_why: str, cudnn: bool | None = None) -> AttentionPolicy:
    """NVIDIA: SDPA for prefill everywhere torch CUDA runs, on the memory-efficient kernel, cuDNN first only when
    ``cudnn`` (None: ``GLM_ENGINE_SDPA_CUDNN``) asks for it; the Triton decode kernel where triton imports."""
    kernels = sdpa_kernels(cudnn)
    why = sdpa_reason(kernels)
    if triton_ok:
        return AttentionPolicy(AttentionPath.SDPA, why, AttentionPath.TRITON_DECODE, TRITON_DECODE_REASON, kernels)
    return AttentionPolicy(AttentionPath.SDPA, why, AttentionPath.SDPA, f"SDPA ({triton_why})", kernels)


class CudaOps(TorchCudaOps):
    """TorchCudaOps for an NVIDIA device: :func:`cuda_policy` and the ``cuda`` Triton configurations."""

    platform = "cuda"

    def default_policy(self) -> AttentionPolicy:
        return cuda_policy(*triton_verdict())
