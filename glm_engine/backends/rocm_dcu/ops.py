"""The ROCm / Hygon DCU op table: the shared ``torch.cuda`` op table (``backends/torch_cuda/ops.py``) with this
stack's own attention choice and Triton launch settings.

Only kernels that exist on ROCm are used: no cuDNN, no flash-attn wheels, no CUDA-only Triton options. Prefill goes
to SDPA where the torch build has AOTriton kernels for the arch (gfx90a, gfx942, gfx950), else to the explicit
fp32-softmax path, so an arch without fused kernels never depends on which fallback a given ROCm torch picks. The
decode kernel and the dequant GEMMs are Triton, compiled by the ROCm Triton backend with the ``hip`` configurations
in :mod:`glm_engine.kernels.triton.configs` (64-wide wavefronts: half the warps for the same threads), but only on an
architecture the installed Triton compiles for (:func:`rocm_triton_verdict`, from ``arch.triton_target``): elsewhere
(gfx906 before Triton 3.8, a Hygon DCU without Hygon's Triton, an unknown arch) the first decode step would fail to
compile, so decode attention takes the prefill path and quantized weights are dequantized per product, each with the
reason recorded where ``supports()`` and ``bench`` report the path.

Grouped key/value heads: the decode kernel reads them in place here as on CUDA. Prefill repeats them: ROCm torch's
memory-efficient SDPA kernel has no GQA (``supports_gqa = false`` under ``USE_ROCM`` in torch's ``sdp_utils.cpp``),
its flash kernel takes no mask, and the explicit path repeats them; the shared SDPA path asks torch per call
(``backends/torch_cuda/attention.py``), so a ROCm torch that gains a kernel for it is used without a change here.
"""

from __future__ import annotations

import importlib.util

import torch

from glm_engine.backends.base import Verdict
from glm_engine.backends.rocm_dcu.arch import classify, describe, has_fused_sdpa, triton_target
from glm_engine.backends.torch_cuda.attention import (
    SDPA_REASON,
    TRITON_DECODE_REASON,
    AttentionPath,
    AttentionPolicy,
)
from glm_engine.backends.torch_cuda.ops import TorchCudaOps
from glm_engine.kernels.triton import triton_verdict
from glm_engine.ops.interface import PackedLinear
from glm_engine.ops.torch_ops import DequantizingLinear
from glm_engine.quant.weight import QuantizedWeight

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


def hygon_triton_backend() -> bool:
    """Whether the installed Triton carries Hygon's ``hcu`` compiler backend (Hygon's DTK build of Triton)."""
    try:
        return importlib.util.find_spec("triton.backends.hcu") is not None
    except (ImportError, ValueError):
        return False


def rocm_triton_verdict(gcn_arch_name: str, device_name: str) -> Verdict:
    """Whether the Triton kernels run on this HIP device: triton imports and compiles for its architecture.

    Without an architecture name (CPU tensors, as under Triton's interpreter) there is no target to check and the
    answer is triton's import alone."""
    ok, why = triton_verdict()
    if not ok or not gcn_arch_name:
        return Verdict(ok, why)
    return Verdict(*triton_target(gcn_arch_name, device_name, installed_triton_version(), hygon_triton_backend()))


def installed_triton_version() -> str:
    """``triton.__version__`` (asked only once triton imports)."""
    import triton

    return triton.__version__


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
        verdict = rocm_triton_verdict(arch, name)
        return rocm_policy(arch, name, verdict.ok, verdict.reason)

    def prepare_quantized(self, weight: QuantizedWeight) -> PackedLinear:
        """The shared choice (Triton kernels or per-product dequantization) where Triton compiles for this device's
        architecture; per-product dequantization with the reason where it does not."""
        verdict = rocm_triton_verdict(*device_arch(self.device))
        if verdict:
            return super().prepare_quantized(weight)
        self.quant_path[weight.format.value] = f"dequantize per product: {verdict.reason}"
        return DequantizingLinear(weight.to(self.device))
