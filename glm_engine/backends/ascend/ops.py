"""The Ascend op table: torch_npu's fused attention, rotary and weight-quant matmul where they keep GLM's semantics on
the detected SoC; the portable ops (with the reason recorded in ``paths``) everywhere else.

- attention: :mod:`glm_engine.backends.ascend.attention` (kernel per SoC family and phase; fp32 -> portable); grouped
  key/value heads go to the kernels as ``num_key_value_heads`` where their pages allow it, else repeated for them.
- rotary: ``torch_npu.npu_rotary_mul(input, r1, r2, rotary_mode='half') -> Tensor`` computes
  ``r1 * input + r2 * cat(-x2, x1)`` with ``x1, x2 = chunk(input, 2, -1)``: exactly the contract's
  ``x * cos + rotate_half(x) * sin``. Documented for the Atlas training, A2, A3 and inference series, fp16/bf16/fp32,
  4-D tensors. Its constraints are given per compile mode: with ``jit_compile=False`` (listed for Atlas A2/A3) a BSND
  input takes r1/r2 as ``1S1D``, ``BS1D`` or ``BSND``, ``D < 896`` and even, ``B, N < 1000``; with
  ``jit_compile=True`` (listed for the Atlas training, A2 and inference series; not A3) r1/r2 are "generally"
  ``1S1D`` for BSND, ``D = 128``, ``B, N <= 1000``, the broadcast axes holding at most 1024 elements. So the per-row
  positions (``BS1D``: each row of the batch at its own positions, which generation with left padding needs) are
  documented for ``jit_compile=False`` only. The mode is a process setting (``torch_npu.npu.set_compile_mode``; the
  default is False on A2/A3 and True on the training and inference series) and is read with
  ``torch_npu.npu.is_jit_compile_false()`` at each call; a mode or family the page lists no limits for runs the
  portable ops, with the reason. r1/r2 must lie in [-1, 1] (cos/sin do). The fused op rounds once where the
  reference's three element-wise fp16 ops round three times.
  https://gitcode.com/Ascend/op-plugin/blob/master/docs/context/torch_npu-npu_rotary_mul.md and
  https://www.hiascend.com/document/detail/zh/Pytorch/600/apiref/apilist/ptaoplist_000945.html
  (``is_jit_compile_false``: True when operators run as binaries, i.e. ``jit_compile=False``)
- layernorm: ``F.layer_norm``, which torch_npu implements natively (aclnnLayerNorm); no torch_npu-specific layer
  norm op is documented with a matching signature, so none is called.
- RMSNorm, SwiGLU: :mod:`glm_engine.backends.ascend.fused` (``npu_rms_norm``, ``npu_swiglu`` where their rounding is
  the contract's: fp32 only; the portable ops otherwise).
- quantized linears: :mod:`glm_engine.backends.ascend.quant` (``npu_weight_quant_batchmatmul``).

``torch_npu`` is imported when an op first needs it (the table exists only where the backend is available, so it
imports); tests pass a stand-in module and a SoC family instead.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from glm_engine.backends.ascend.attention import (
    SharedMask,
    choose_kernel,
    fused_attention,
    grouped_kv_reason,
    shape_reason,
)
from glm_engine.backends.ascend.fused import npu_rmsnorm, npu_swiglu, rmsnorm_reason, swiglu_reason
from glm_engine.backends.ascend.quant import NpuQuantLinear, split_note, unsupported_reason
from glm_engine.backends.ascend.soc import SocFamily, has_bf16
from glm_engine.ops.interface import PackedLinear, expand_groups
from glm_engine.ops.torch_ops import DequantizingLinear, TorchOps
from glm_engine.quant.weight import QuantizedWeight

ROTARY_MAX_DIM = 896  # npu_rotary_mul, jit_compile=False: D < 896 and even
ROTARY_MAX_BN = 1000  # B and N below 1000 (jit_compile=False) / at most 1000 (jit_compile=True)
ROTARY_JIT_DIM = 128  # jit_compile=True: D must be 128
ROTARY_JIT_MAX_BROADCAST = 1024  # jit_compile=True: the broadcast axes hold at most 1024 elements
# The families each compile mode's constraints are listed for on the npu_rotary_mul page.
ROTARY_BINARY_FAMILIES = (SocFamily.ATLAS_A2, SocFamily.ATLAS_A3)  # jit_compile=False
ROTARY_JIT_FAMILIES = (SocFamily.ATLAS_TRAINING, SocFamily.ATLAS_A2, SocFamily.ATLAS_INFERENCE)  # jit_compile=True


def jit_compile_false(npu: ModuleType | object) -> bool | None:
    """``torch_npu.npu.is_jit_compile_false()``: True when operators run as prebuilt binaries (``jit_compile=False``),
    False when they are compiled online; None when this torch_npu cannot say."""
    query = getattr(getattr(npu, "npu", None), "is_jit_compile_false", None)
    if query is None:
        return None
    try:
        return bool(query())
    except Exception:  # an uninitialised runtime; the portable path runs, with this reason
        return None


def rotary_reason(
    family: SocFamily, dtype: torch.dtype, q: torch.Tensor, cos: torch.Tensor, binary: bool | None
) -> str:
    """Why ``npu_rotary_mul`` cannot run ``q [b, s, n, d]`` with ``cos [b or 1, s, 1, d]`` on ``family`` in the
    current compile mode (``binary``: :func:`jit_compile_false`), or ""."""
    b, _, n, d = q.shape
    if family is SocFamily.UNKNOWN:
        return "npu_rotary_mul's constraints are documented per product; this SoC is not one of them"
    if dtype == torch.bfloat16 and not has_bf16(family):
        return f"bf16 is documented for Atlas A2/A3 only, not {family.value}"
    if binary is None:
        return (
            "npu_rotary_mul's limits depend on the compile mode, and this torch_npu cannot say which is set "
            "(no torch_npu.npu.is_jit_compile_false)"
        )
    if binary:
        if family not in ROTARY_BINARY_FAMILIES:
            return f"npu_rotary_mul documents jit_compile=False for Atlas A2/A3 only, not {family.value}"
        if d % 2 or d >= ROTARY_MAX_DIM or b >= ROTARY_MAX_BN or n >= ROTARY_MAX_BN:
            return f"npu_rotary_mul needs an even head dim < {ROTARY_MAX_DIM} and batch, heads < {ROTARY_MAX_BN}"
        return ""
    if family not in ROTARY_JIT_FAMILIES:
        return f"npu_rotary_mul documents no limits for jit_compile=True on {family.value}"
    if d != ROTARY_JIT_DIM or cos.shape[0] != 1 or b * n > ROTARY_JIT_MAX_BROADCAST or max(b, n) > ROTARY_MAX_BN:
        per_row = " (per-row positions, BS1D, are documented for jit_compile=False only)" if cos.shape[0] != 1 else ""
        return (
            f"npu_rotary_mul with jit_compile=True takes head dim {ROTARY_JIT_DIM}, positions shared by the batch "
            f"(1S1D) and batch x heads <= {ROTARY_JIT_MAX_BROADCAST}; got d={d}, cos batch {cos.shape[0]}, "
            f"{b}x{n}{per_row}"
        )
    return ""


class AscendOps(TorchOps):
    """TorchOps with torch_npu's fused kernels where they keep the semantics; ``paths`` says how each op ran last."""

    def __init__(
        self,
        device: torch.device,
        dtype: torch.dtype,
        npu: ModuleType | object | None = None,
        family: SocFamily = SocFamily.UNKNOWN,
    ) -> None:
        super().__init__(device, dtype)
        self._npu = npu
        self.family = family
        self.quant_path: dict[str, str] = {}  # format name -> how the last weight of that format is served
        self.paths: dict[str, str] = {}  # "attention-prefill", "rotary", "rmsnorm" ... -> kernel or reason
        self.masks = SharedMask()  # the fused kernels' atten_mask, built once per forward call for every layer

    def _torch_npu(self) -> ModuleType | object:
        if self._npu is None:
            self._npu = importlib.import_module("torch_npu")
        return self._npu

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocked: torch.Tensor, layer_scale: float
    ) -> torch.Tensor:
        decode = q.shape[2] == 1
        key = "attention-decode" if decode else "attention-prefill"
        kernel, why = choose_kernel(self._torch_npu(), self.family, q.dtype, decode)
        if kernel is not None:
            why = shape_reason(kernel, self.family, q, k)
        if kernel is None or why:
            self.paths[key] = f"portable: {why}"
            return super().attention(q, k, v, blocked, layer_scale)
        heads, groups = q.shape[1], k.shape[1]
        repeat = grouped_kv_reason(kernel, self.family, heads, groups)
        if repeat:
            k, v = expand_groups(k, v, heads)
            self.paths[key] = f"{kernel.value}, key/value heads repeated: {repeat}"
        else:
            self.paths[key] = kernel.value + (f", {groups} key/value heads read in place" if groups != heads else "")
        return fused_attention(self._torch_npu(), kernel, q, k, v, blocked, self.masks)

    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor, eps: float, weight_in_fp32: bool = False) -> torch.Tensor:
        why = rmsnorm_reason(self._torch_npu(), self.family, x.dtype)
        self.paths["rmsnorm"] = f"portable: {why}" if why else "npu_rms_norm"
        if why:
            return super().rmsnorm(x, weight, eps, weight_in_fp32)
        return npu_rmsnorm(self._torch_npu(), x, weight, eps)

    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        why = swiglu_reason(self._torch_npu(), self.family, x.dtype)
        self.paths["swiglu"] = f"portable: {why}" if why else "npu_swiglu"
        return super().swiglu(x) if why else npu_swiglu(self._torch_npu(), x)

    def rotary(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        why = rotary_reason(self.family, q.dtype, q, cos, jit_compile_false(self._torch_npu()))
        if why:
            self.paths["rotary"] = f"portable: {why}"
            return super().rotary(q, k, cos, sin)
        self.paths["rotary"] = "npu_rotary_mul"
        npu = self._torch_npu()
        cos, sin = cos.contiguous(), sin.contiguous()
        return npu.npu_rotary_mul(q.contiguous(), cos, sin), npu.npu_rotary_mul(k.contiguous(), cos, sin)

    def prepare_quantized(self, weight: QuantizedWeight) -> PackedLinear:
        why = unsupported_reason(weight, self.dtype, self.family)
        if why:
            self.quant_path[weight.format.value] = f"dequantize per product: {why}"
            return DequantizingLinear(weight.to(self.device))
        how = "torch_npu.npu_weight_quant_batchmatmul" + split_note(weight.out_features)
        self.quant_path[weight.format.value] = how
        return NpuQuantLinear(weight.to(self.device), self.dtype, self._torch_npu())
