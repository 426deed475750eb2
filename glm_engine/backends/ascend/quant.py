"""Quantized linears on Ascend through ``torch_npu.npu_weight_quant_batchmatmul``, with the layout made at load.

What torch_npu documents, and this module relies on:

- ``torch_npu.npu_weight_quant_batchmatmul(x, weight, antiquant_scale, antiquant_offset=None, quant_scale=None,
  quant_offset=None, bias=None, antiquant_group_size=0, inner_precise=0) -> Tensor`` computes
  ``x @ ((weight + antiquant_offset) * antiquant_scale)`` for ``x (M, K)`` fp16/bf16 and ``weight (K, N)`` int8, or
  int32 carrying eight INT4 values each. ``weight`` may be a transposed (non-contiguous) view, and for per-channel
  scales the transposed form is the recommended one. ``antiquant_scale`` has ``x``'s dtype and shape ``(1, N)``
  per channel or ``(ceil_div(K, antiquant_group_size), N)`` per group; per-group needs Atlas A2/A3 (Atlas inference
  series: per-tensor/per-channel INT8 only). The output has ``x``'s dtype.
  (Ascend Extension for PyTorch API reference, torch_npu.npu_weight_quant_batchmatmul:
  https://www.hiascend.com/document/detail/zh/Pytorch/700/apiref/apilist/ptaoplist_000179.html)
- ``antiquant_group_size`` is 0 or a multiple of 32 in ``[32, K - 1]``, and a transposed int32 weight counts
  ``K = weight.size(-2) * 8`` (op-plugin ``WeightQuantBatchMatmulV2KernelNpuOpApi.cpp``,
  https://gitcode.com/Ascend/op-plugin/blob/master/op_plugin/ops/opapi/WeightQuantBatchMatmulV2KernelNpuOpApi.cpp).
- ``torch_npu.npu_convert_weight_to_int4pack(weight, inner_k_tiles=0) -> Tensor`` packs a contiguous int32
  ``(k, n)`` or ``(n, k)`` tensor of values in [-8, 7], last dim a multiple of 8, into int32 ``(k, n / 8)`` /
  ``(n, k / 8)``; its documented example packs ``(n, k)`` and passes the packed tensor's transpose as ``weight``
  (https://hiascend.com/document/detail/zh/Pytorch/600/apiref/apilist/ptaoplist_000846.html). Its bit layout
  (value ``8j + i`` in bits ``4i .. 4i + 3`` of word ``j``, low nibble first, op-plugin's
  ``test/test_custom_ops/test_npu_convert_weight_to_int4pack.py``) is the reverse of glm-engine's bytes (even column
  in the high nibble), so INT4 weights are unpacked to values and re-packed by torch_npu itself.

- Shape limits (the page's 约束说明, https://gitcode.com/Ascend/op-plugin/blob/master/docs/context/torch_npu-npu_weight_quant_batchmatmul.md,
  and aclnnWeightQuantBatchMatmulV2's parameter errors in CANN ops-nn): ``x`` and ``weight`` are ``(M, K)`` and
  ``(K, N)`` with **K and N in [1, 65535]**; M in [1, 2^31 - 1] for a non-transposed ``x`` (ours: rows of a contiguous
  tensor). GLM-130B's TP=1 ``dense_h_to_4h`` (N = 2 x 32768 = 65536) and a quantized output projection
  (``--quant-output``, N = the vocabulary, 130528 or 150528) exceed N; no GLM linear exceeds K (the widest input is
  32768).

So at load: INT8 keeps its stored ``[N, K]`` bytes and passes their transpose; INT4 is unpacked to int32 ``[N, K]``,
packed by ``npu_convert_weight_to_int4pack`` to ``[N, K / 8]`` and passed transposed; scales ``[N, groups]`` are cast
to the activation dtype and passed transposed (``(groups, N)``). For bf16 activations the fp16 scales are rounded to
bf16 (the op takes scales in ``x``'s dtype), a relative change of at most 2^-9 per scale.

A weight wider than 65535 output columns is split along N at load into column blocks of at most
:data:`MAX_N_PER_CALL` (each a row range of the stored ``[N, K]`` layout, so its transpose is still the documented
transposed view, no copy), one call each, their outputs concatenated. Splitting N is exact: every output column is the
same dot product over all of K, only computed by another call (the one extra cost is the concatenation of the
``[M, N]`` output). A K above 65535 would need the partial sums of several calls added, which rounds the output once
more in fp16/bf16; that is not split but dequantized per product, with the reason (:func:`unsupported_reason`).
"""

from __future__ import annotations

from types import ModuleType

import torch

from glm_engine.backends.ascend.soc import SocFamily, has_groupwise_weight_quant, has_weight_quant_matmul
from glm_engine.errors import BackendError
from glm_engine.ops.interface import PackedLinear
from glm_engine.quant.weight import QuantizedWeight

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16)  # x dtypes npu_weight_quant_batchmatmul takes
GROUP_MULTIPLE = 32  # antiquant_group_size: 0 or a multiple of 32 below K (op-plugin's check)
INT4_PER_INT32 = 8  # npu_convert_weight_to_int4pack: eight INT4 values per int32 word
MAX_KN = 65535  # npu_weight_quant_batchmatmul: K and N in [1, 65535] (its page's constraints, see the module doc)
# Column blocks of a split N: the largest multiple of 64 within the limit (64-aligned N is what the op's fast paths
# name, e.g. the int64-scale and FRACTAL_NZ cases), so a split never leaves a block that breaks an alignment.
N_ALIGN = 64
MAX_N_PER_CALL = MAX_KN // N_ALIGN * N_ALIGN  # 65472


def unsupported_reason(weight: QuantizedWeight, dtype: torch.dtype, family: SocFamily | None = None) -> str:
    """Why ``npu_weight_quant_batchmatmul`` cannot run this weight with ``dtype`` activations on ``family`` (None:
    the SoC is not known yet, only the SoC-independent rules apply), or ""."""
    if family is not None and not has_weight_quant_matmul(family):
        return f"npu_weight_quant_batchmatmul is not documented for {family.value}"
    if dtype not in ACTIVATION_DTYPES:
        return f"npu_weight_quant_batchmatmul takes fp16/bf16 activations, not {dtype}"
    if family is not None and not has_groupwise_weight_quant(family):
        if dtype != torch.float16:
            return f"npu_weight_quant_batchmatmul takes fp16 activations only on {family.value}"
        if weight.bits == 4 or weight.groups > 1:
            return f"on {family.value} npu_weight_quant_batchmatmul runs per-channel INT8 only (INT4/per-group: A2/A3)"
    if weight.groups > 1 and weight.group_size % GROUP_MULTIPLE:
        return (
            f"npu_weight_quant_batchmatmul needs groups of a multiple of {GROUP_MULTIPLE} columns, "
            f"not {weight.group_size}"
        )
    if weight.bits == 4 and weight.in_features % INT4_PER_INT32:
        return f"npu_convert_weight_to_int4pack needs an input width that is a multiple of 8, not {weight.in_features}"
    if weight.in_features > MAX_KN:
        return (
            f"npu_weight_quant_batchmatmul documents K <= {MAX_KN}, this weight's input width is {weight.in_features} "
            "(splitting K would add partial sums in the activation dtype, one rounding more than the contract)"
        )
    return ""


def column_blocks(out_features: int) -> list[tuple[int, int]]:
    """``[start, end)`` output-column ranges, each at most :data:`MAX_N_PER_CALL` wide, covering ``out_features``:
    one range when the width is within the op's N limit, else as few near-equal 64-aligned blocks as the limit
    allows."""
    if out_features <= MAX_KN:
        return [(0, out_features)]
    parts = -(-out_features // MAX_N_PER_CALL)
    width = -(-out_features // parts)
    width = -(-width // N_ALIGN) * N_ALIGN  # <= MAX_N_PER_CALL, since ceil(N / parts) <= MAX_N_PER_CALL
    return [(start, min(start + width, out_features)) for start in range(0, out_features, width)]


def split_note(out_features: int) -> str:
    """How a weight of ``out_features`` columns is served: "" for one call, else the split and why."""
    blocks = column_blocks(out_features)
    if len(blocks) == 1:
        return ""
    return (
        f", N={out_features} split into {len(blocks)} calls of <= {MAX_N_PER_CALL} columns (the op documents "
        f"N <= {MAX_KN})"
    )


def antiquant_group_size(weight: QuantizedWeight) -> int:
    """The op's ``antiquant_group_size``: 0 per channel (rowwise), else the group width."""
    return weight.group_size if weight.groups > 1 else 0


def antiquant_scale(weight: QuantizedWeight, dtype: torch.dtype) -> torch.Tensor:
    """Scales as the op takes them: ``(groups, N)`` in the activation dtype, a transposed view of ``[N, groups]``."""
    return weight.scale.to(dtype).contiguous().t()


def int8_weight(weight: QuantizedWeight) -> torch.Tensor:
    """The INT8 weight as ``(K, N)``: the transposed view of the stored ``[N, K]`` bytes (no copy)."""
    return weight.stored.t()


def int4_values(weight: QuantizedWeight) -> torch.Tensor:
    """INT4 values as the contiguous int32 ``[N, K]`` that ``npu_convert_weight_to_int4pack`` packs."""
    return weight.values().to(torch.int32).contiguous()


class NpuQuantLinear(PackedLinear):
    """``x @ W.T`` by ``torch_npu.npu_weight_quant_batchmatmul`` on the layout made here, once, at load: one
    ``(weight, scale)`` pair per block of :func:`column_blocks` (one block below the op's N limit)."""

    def __init__(self, weight: QuantizedWeight, dtype: torch.dtype, npu: ModuleType) -> None:
        super().__init__(weight)
        why = unsupported_reason(weight, dtype)
        if why:
            raise BackendError(why)
        self.npu = npu
        self.dtype = dtype
        self.group_size = antiquant_group_size(weight)
        scale = antiquant_scale(weight, dtype).t()  # [N, groups], contiguous
        stored = weight.stored if weight.bits == 8 else npu.npu_convert_weight_to_int4pack(int4_values(weight))
        # Row ranges of the [N, K] (or packed [N, K / 8]) layout, each passed transposed: still the documented
        # transposed (K, N) view, without a copy.
        self.blocks = [(stored[a:b].t(), scale[a:b].t()) for a, b in column_blocks(weight.out_features)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.dtype:
            raise BackendError(f"this weight was prepared for {self.dtype} activations, got {x.dtype}")
        rows = x.reshape(-1, self.in_features)
        outs = [
            self.npu.npu_weight_quant_batchmatmul(rows, weight, scale, antiquant_group_size=self.group_size)
            for weight, scale in self.blocks
        ]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return out.reshape(*x.shape[:-1], self.out_features)

    @property
    def nbytes(self) -> int:
        return sum(w.numel() * w.element_size() + s.numel() * s.element_size() for w, s in self.blocks)
