"""RMSNorm and SwiGLU on torch_npu's fused kernels, only where the kernel's rounding is known to be the op contract's.

The contract fixes where these ops round (``OpTable.rmsnorm``, ``OpTable.swiglu``):

- RMSNorm computes ``h = x * rsqrt(mean(x^2) + eps)`` in fp32, then applies the gain either after rounding ``h`` to
  the activation dtype (``weight_in_fp32=False``, transformers' native GLM classes: two roundings) or before
  (``weight_in_fp32=True``, THUDM's remote code: one rounding);
- SwiGLU is ``silu(gate) * up`` in the activation dtype (``silu`` rounded, then the product rounded).

What torch_npu documents:

- ``torch_npu.npu_rms_norm(self, gamma, epsilon=1e-06) -> (Tensor, Tensor)``: ``RmsNorm(x_i) = x_i / Rms(x) * g_i``
  with ``Rms(x) = sqrt(mean(x^2) + eps)``; ``gamma`` in ``self``'s dtype, shaped like ``self``'s last dims; outputs
  ``y`` and the fp32 ``rstd``. Products: Atlas training series, A2, A3 and the Atlas inference series (fp16/fp32 only
  there, per aclnnRmsNorm). https://www.hiascend.com/document/detail/zh/Pytorch/700/apiref/apilist/ptaoplist_000860.html
  and https://www.hiascend.com/document/detail/zh/CANNCommunityEdition/83RC1alpha001/API/aolapi/context/aclnnRmsNorm.md
- ``torch_npu.npu_swiglu(input, dim=-1) -> Tensor``: ``swish(A) * B = A * sigmoid(A) * B`` with ``A`` the first and
  ``B`` the second half of ``input`` along ``dim`` (the contract's ``[gate | up]``); contiguous input; fp32, fp16,
  bf16. Products: Atlas A2 training series (the API page; a tuning guide adds A3, the API reference does not).
  https://www.hiascend.com/document/detail/zh/Pytorch/720/apiref/torchnpuCustomsapi/context/%EF%BC%88beta%EF%BC%89torch_npu-npu_swiglu.md

Neither page says where the kernel rounds in fp16/bf16 (the formula is given in real arithmetic), so in those dtypes
the contract's rounding cannot be claimed for either kernel and the portable ops run, with that reason. In fp32 the
two RMSNorm variants are the same computation (``h.to(fp32)`` is the identity) and every intermediate is fp32 either
way, so the kernels meet the contract up to fp32 summation order. When a device run of ``glm-engine conformance
--backend ascend`` (and a bitwise comparison against the portable ops) shows the fp16/bf16 rounding, widen
:data:`FUSED_DTYPES` per kernel.
"""

from __future__ import annotations

from types import ModuleType

import torch

from glm_engine.backends.ascend.soc import SocFamily

# The dtypes in which the fused kernels' rounding is the contract's (see the module docstring).
FUSED_DTYPES = (torch.float32,)
RMS_NORM = "npu_rms_norm"
SWIGLU = "npu_swiglu"
RMS_NORM_FAMILIES = (SocFamily.ATLAS_TRAINING, SocFamily.ATLAS_A2, SocFamily.ATLAS_A3, SocFamily.ATLAS_INFERENCE)
SWIGLU_FAMILIES = (SocFamily.ATLAS_A2,)
UNDOCUMENTED_ROUNDING = "its page gives the formula, not where it rounds in {dtype}, and the op contract fixes that"


def _reason(
    kernel: str, families: tuple[SocFamily, ...], npu: ModuleType | object | None, family: SocFamily, dtype: torch.dtype
) -> str:
    if family not in families:
        return f"{kernel} is not documented for {family.value}"
    if dtype not in FUSED_DTYPES:
        return f"{kernel}: " + UNDOCUMENTED_ROUNDING.format(dtype=str(dtype).removeprefix("torch."))
    if npu is not None and not hasattr(npu, kernel):
        return f"this torch_npu has no {kernel} (upgrade torch_npu and CANN together)"
    return ""


def rmsnorm_reason(npu: ModuleType | object | None, family: SocFamily, dtype: torch.dtype) -> str:
    """Why ``npu_rms_norm`` does not run RMSNorm in ``dtype`` on ``family`` (the portable op runs), or ""; ``npu``
    None answers from the documentation alone."""
    return _reason(RMS_NORM, RMS_NORM_FAMILIES, npu, family, dtype)


def swiglu_reason(npu: ModuleType | object | None, family: SocFamily, dtype: torch.dtype) -> str:
    """Why ``npu_swiglu`` does not run SwiGLU in ``dtype`` on ``family`` (the portable op runs), or ""."""
    return _reason(SWIGLU, SWIGLU_FAMILIES, npu, family, dtype)


def npu_rmsnorm(npu: ModuleType | object, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim through ``npu_rms_norm`` (its first output; the second is ``rstd``)."""
    return npu.npu_rms_norm(x, weight.to(x.dtype), epsilon=eps)[0]


def npu_swiglu(npu: ModuleType | object, x: torch.Tensor) -> torch.Tensor:
    """SwiGLU over the last dim's ``[gate | up]`` halves through ``npu_swiglu``."""
    return npu.npu_swiglu(x.contiguous(), dim=-1)
