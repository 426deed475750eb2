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

So at load: INT8 keeps its stored ``[N, K]`` bytes and passes their transpose; INT4 is unpacked to int32 ``[N, K]``,
packed by ``npu_convert_weight_to_int4pack`` to ``[N, K / 8]`` and passed transposed; scales ``[N, groups]`` are cast
to the activation dtype and passed transposed (``(groups, N)``). For bf16 activations the fp16 scales are rounded to
bf16 (the op takes scales in ``x``'s dtype), a relative change of at most 2^-9 per scale.
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
    return ""


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
    """``x @ W.T`` by ``torch_npu.npu_weight_quant_batchmatmul`` on the layout made here, once, at load."""

    def __init__(self, weight: QuantizedWeight, dtype: torch.dtype, npu: ModuleType) -> None:
        super().__init__(weight)
        why = unsupported_reason(weight, dtype)
        if why:
            raise BackendError(why)
        self.npu = npu
        self.dtype = dtype
        self.group_size = antiquant_group_size(weight)
        self.scale = antiquant_scale(weight, dtype)
        if weight.bits == 8:
            self.weight = int8_weight(weight)
        else:
            self.weight = npu.npu_convert_weight_to_int4pack(int4_values(weight)).t()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.dtype:
            raise BackendError(f"this weight was prepared for {self.dtype} activations, got {x.dtype}")
        rows = x.reshape(-1, self.in_features)
        out = self.npu.npu_weight_quant_batchmatmul(rows, self.weight, self.scale, antiquant_group_size=self.group_size)
        return out.reshape(*x.shape[:-1], self.out_features)

    @property
    def nbytes(self) -> int:
        weight = self.weight.numel() * self.weight.element_size()
        return weight + self.scale.numel() * self.scale.element_size()
