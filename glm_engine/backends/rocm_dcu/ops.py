"""The ROCm / Hygon DCU op table: the shared ``torch.cuda`` op table (``backends/torch_cuda/ops.py``) with this
stack's own attention choice and Triton launch settings.

Only kernels that exist on ROCm are used: no cuDNN, no flash-attn wheels, no CUDA-only Triton options. Prefill goes
to SDPA where the torch build has AOTriton kernels for the arch (gfx90a, gfx942, gfx950), else to the explicit
fp32-softmax path, so an arch without fused kernels never depends on which fallback a given ROCm torch picks. The
decode kernel and the dequant GEMMs are Triton, compiled by the ROCm Triton backend with the ``hip`` configurations
in :mod:`glm_engine.kernels.triton.configs` (64-wide wavefronts: half the warps for the same threads).

Grouped key/value heads: the decode kernel reads them in place here as on CUDA. Prefill repeats them: ROCm torch's
memory-efficient SDPA kernel has no GQA (``supports_gqa = false`` under ``USE_ROCM`` in torch's ``sdp_utils.cpp``),
its flash kernel takes no mask, and the explicit path repeats them; the shared SDPA path asks torch per call
(``backends/torch_cuda/attention.py``), so a ROCm torch that gains a kernel for it is used without a change here.
"""

from __future__ import annotations

import torch

from glm_engine.backends.rocm_dcu.arch import classify, describe, has_fused_sdpa
from glm_engine.backends.torch_cuda.attention import (
    SDPA_REASON,
    TRITON_DECODE_REASON,
    AttentionPath,
    AttentionPolicy,
)
from glm_engine.backends.torch_cuda.ops import TorchCudaOps
from glm_engine.kernels.triton import triton_verdict

REFERENCE_REASON = "explicit fp32-softmax path"


def rocm_policy(gcn_arch_name: str, device_name: str, triton_ok: bool, triton_why: str) -> AttentionPolicy:
    """Attention paths for one HIP device: fused SDPA only where torch ships it for the arch."""
    where = describe(gcn_arch_name, device_name)
    if has_fused_sdpa(gcn_arch_name, device_name):
        prefill, prefill_why = AttentionPath.SDPA, f"{SDPA_REASON}; AOTriton kernels exist for {where}"
    else:
        vendor = classify(gcn_arch_name, device_name).vendor.value
        prefill, prefill_why = (
            AttentionPath.REFERENCE,
            f"{REFERENCE_REASON}: no fused SDPA kernels in ROCm torch for {where} ({vendor})",
        )
    if triton_ok:
        return AttentionPolicy(prefill, prefill_why, AttentionPath.TRITON_DECODE, TRITON_DECODE_REASON)
    return AttentionPolicy(prefill, prefill_why, prefill, f"{prefill_why} ({triton_why})")


def device_arch(device: torch.device) -> tuple[str, str]:
    """``(gcnArchName, name)`` of a HIP device; empty strings for a CPU device (interpreter tests)."""
    if device.type != "cuda":
        return "", ""
    props = torch.cuda.get_device_properties(device)
    return getattr(props, "gcnArchName", ""), props.name


class RocmOps(TorchCudaOps):
    """TorchCudaOps for a HIP device: ROCm attention policy and ``hip`` Triton configurations."""

    platform = "hip"

    def default_policy(self) -> AttentionPolicy:
        arch, name = device_arch(self.device)
        return rocm_policy(arch, name, *triton_verdict())
