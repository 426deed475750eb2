"""The CUDA op table: the shared ``torch.cuda`` op table with NVIDIA's attention policy and ``cuda`` Triton settings.

Prefill attention goes to torch SDPA wherever torch CUDA runs (its memory-efficient kernel takes GLM's bool mask);
one-row decode attention to the Triton split-K kernel where triton imports, else to SDPA as well. The machinery
(paths, reasons, the SDPA call) is shared with ``rocm_dcu`` in ``backends/torch_cuda/attention.py``.
"""

from __future__ import annotations

from glm_engine.backends.torch_cuda.attention import (
    SDPA_REASON,
    TRITON_DECODE_REASON,
    AttentionPath,
    AttentionPolicy,
)
from glm_engine.backends.torch_cuda.ops import TorchCudaOps
from glm_engine.kernels.triton import triton_verdict


def cuda_policy(triton_ok: bool, triton_why: str) -> AttentionPolicy:
    """NVIDIA: SDPA for prefill everywhere torch CUDA runs; the Triton decode kernel where triton imports."""
    if triton_ok:
        return AttentionPolicy(AttentionPath.SDPA, SDPA_REASON, AttentionPath.TRITON_DECODE, TRITON_DECODE_REASON)
    return AttentionPolicy(AttentionPath.SDPA, SDPA_REASON, AttentionPath.SDPA, f"SDPA ({triton_why})")


class CudaOps(TorchCudaOps):
    """TorchCudaOps for an NVIDIA device: :func:`cuda_policy` and the ``cuda`` Triton configurations."""

    platform = "cuda"

    def default_policy(self) -> AttentionPolicy:
        return cuda_policy(*triton_verdict())
