"""The CPU backend's runtime layouts for quantized linear weights, made once at load.

Every format runs on torch's weight-only kernels (``quant_kernels``), which are fast only with bf16 activations:
activations of any compute dtype are rounded to bf16 for the product and the result is cast back to that dtype. This
costs ~1e-5 NMSE (bf16 rounding of inputs, scales and outputs), far below the quantization error itself (~1e-4 at
INT8, ~1e-2 at INT4), while torch's fp32 and fp16 kernels are 12-50x slower (4096x4096, one row: int8 0.58 ms in
bf16, 7.2 ms in fp32, 14.6 ms in fp16; int4 0.52, 17.6 and 26.2 ms). Scales are rounded from fp16 to bf16 for the same
reason (the kernels take scales in the activation dtype).

* INT8 rowwise: ``_weight_int8pack_mm``, the int8 values as stored, one bf16 scale per row.
* INT8 groupwise: the int4 kernel on the two 4-bit halves of each value (``Int8GroupwiseLinear``), since the int8
  kernel has one scale per row.
* INT4 rowwise and groupwise: ``_weight_int4pack_mm_for_cpu``. Our symmetric values ``q`` in [-8, 7] are the kernel's
  ``(u - 8) * scale + zero`` with ``u = q + 8`` and ``zero = 0``; a row scale is repeated over the kernel's groups,
  which makes rowwise exact on the groupwise kernel.

Shapes the kernels cannot take are padded with zero weights at load (in-features of INT8 and rowwise INT4, rows of
INT4) and the padding is dropped from each product, so any ``[out, in]`` runs; group sizes that are not multiples of
32 take the portable dequantizing path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glm_engine.backends.cpu.int_dot import (
    extension_status,
    int_dot_linear,
    pack_int4_blocks,
    pack_int8_blocks,
    requested,
)
from glm_engine.backends.cpu.quant_kernels import (
    INT4_GROUP_SIZES,
    INT4_N_MULTIPLE,
    INT8_K_MULTIPLE,
    int4_matmul,
    int4_pack,
    int4_scales_and_zeros,
    int8_matmul,
)
from glm_engine.errors import BackendError
from glm_engine.ops.interface import PackedLinear
from glm_engine.ops.torch_ops import DequantizingLinear
from glm_engine.quant.formats import QuantFormat
from glm_engine.quant.weight import QuantizedWeight

KERNEL_DTYPE = torch.bfloat16  # the activation dtype torch's weight-only CPU kernels are fast in
INT4_OFFSET = 8  # the int4 kernel's unsigned values are ``q + 8``


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class CpuQuantizedLinear(PackedLinear):
    """Shared calling convention: flatten to rows, round to bf16, pad in-features, run, drop padded outputs."""

    in_padding = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).to(KERNEL_DTYPE)
        if self.in_padding:
            rows = F.pad(rows, (0, self.in_padding))
        out = self._matmul(rows.contiguous())[:, : self.out_features]
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _matmul(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, torch.Tensor))


class Int8RowwiseLinear(CpuQuantizedLinear):
    """INT8 with one scale per row on ``_weight_int8pack_mm``."""

    def __init__(self, weight: QuantizedWeight) -> None:
        super().__init__(weight)
        self.in_padding = _round_up(self.in_features, INT8_K_MULTIPLE) - self.in_features
        self.values = F.pad(weight.stored, (0, self.in_padding)).contiguous()
        self.scales = weight.scale[:, 0].to(KERNEL_DTYPE).contiguous()

    def _matmul(self, rows: torch.Tensor) -> torch.Tensor:
        return int8_matmul(rows, self.values, self.scales)


def int4_kernel_group_size(span: int) -> int | None:
    """The largest group size the int4 kernel accepts that divides ``span`` (a weight's group size, or its padded
    in-features when rowwise), or None when there is none."""
    return next((size for size in INT4_GROUP_SIZES if span % size == 0), None)


def _kernel_group_size(span: int) -> int:
    size = int4_kernel_group_size(span)
    if size is None:
        raise BackendError(
            f"the CPU backend's groupwise kernel runs group sizes that are multiples of {INT4_GROUP_SIZES[-1]}, got "
            f"{span}: quantize with --group-size 32, 64 or 128, or load it through prepare_cpu_quantized, which "
            "takes the portable path for such weights"
        )
    return size


class Int4Linear(CpuQuantizedLinear):
    """INT4, rowwise or groupwise, on ``_weight_int4pack_mm_for_cpu`` (rows padded to a multiple of 16).

    Only the bf16 scales are kept (``[kernel groups, out]``); the kernel's interleaved ``(scale, zero)`` operand,
    whose zeros are all 0 for our symmetric values, is assembled for each product and dropped after it."""

    def __init__(self, weight: QuantizedWeight) -> None:
        super().__init__(weight)
        rowwise = weight.groups == 1
        if rowwise:
            self.in_padding = _round_up(self.in_features, INT4_GROUP_SIZES[-1]) - self.in_features
        padded_in = self.in_features + self.in_padding
        self.group_size = _kernel_group_size(padded_in if rowwise else weight.group_size)
        row_padding = _round_up(self.out_features, INT4_N_MULTIPLE) - self.out_features
        unsigned = weight.values().to(torch.int32) + INT4_OFFSET
        unsigned = F.pad(unsigned, (0, self.in_padding, 0, row_padding), value=INT4_OFFSET)
        self.packed = int4_pack(unsigned)
        self.repeat = padded_in // self.group_size // weight.groups  # kernel groups per stored scale
        self.scales = F.pad(weight.scale, (0, 0, 0, row_padding)).t().to(KERNEL_DTYPE).contiguous()  # [groups, out]

    def scales_and_zeros(self) -> torch.Tensor:
        """The kernel's ``[kernel groups, out, 2]`` operand: each scale (repeated over the kernel's groups) beside a
        zero of 0, in the per-thread buffer of ``int4_scales_and_zeros`` (valid until the next product)."""
        return int4_scales_and_zeros(self.scales, self.repeat)

    def _matmul(self, rows: torch.Tensor) -> torch.Tensor:
        return int4_matmul(rows, self.packed, self.group_size, self.scales_and_zeros())


class Int8GroupwiseLinear(Int4Linear):
    """INT8 with a scale per row and input group, as two INT4 halves on the int4 kernel (one call, 1 byte/weight).

    ``q = 16 * hi + lo`` with ``hi = q >> 4`` in [-8, 7] and ``lo = q & 15`` in [0, 15], so ``q * s = hi * (16 s) +
    (lo - 8) * s + 8 s``: ``hi`` runs as the kernel's ``u - 8`` with scale ``16 s`` and zero 0, ``lo`` as ``u`` with
    scale ``s`` and zero ``8 s`` (both exact in bf16). The halves sit side by side along the input, ``[hi | lo]``,
    and the activation is repeated, so one product sums both. torch's int8 kernel has one scale per row; per-group
    calls to it were measured 1.4-2.6x slower at decode (32-128 calls of ~20 us each for 4096x4096). The kernel's
    ``(scale, zero)`` operand is kept (4 bf16 values per group): here the zero point ``8 s`` is the split's, not a
    stored format's, and deriving the operand for each product was measured to cost +35% of a one-thread product
    (1024x4096, groups of 32, AMD EPYC Zen 4); the integer dot-product kernel (``IntDotLinear``) runs this format
    from the stored bytes and scales alone."""

    def __init__(self, weight: QuantizedWeight) -> None:
        PackedLinear.__init__(self, weight)
        q = weight.values().to(torch.int32)
        self.group_size = _kernel_group_size(weight.group_size)
        row_padding = _round_up(self.out_features, INT4_N_MULTIPLE) - self.out_features
        unsigned = torch.cat(((q >> 4) + INT4_OFFSET, q & 15), dim=1)
        self.packed = int4_pack(F.pad(unsigned, (0, 0, 0, row_padding), value=INT4_OFFSET))
        scale = weight.scale.float().repeat_interleave(weight.group_size // self.group_size, dim=1)
        scale = F.pad(scale, (0, 0, 0, row_padding)).t()  # [kernel groups, out]
        scales = torch.cat((16 * scale, scale))
        zeros = torch.cat((torch.zeros_like(scale), INT4_OFFSET * scale))
        self.operand = torch.stack((scales, zeros), dim=-1).to(KERNEL_DTYPE)

    def scales_and_zeros(self) -> torch.Tensor:
        return self.operand

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return super().__call__(torch.cat((x, x), dim=-1))


class IntDotLinear(PackedLinear):
    """INT4 (rowwise, groupwise) and INT8 groupwise on the integer dot-product kernel (``int_dot``): activations
    quantized to int8 per block of 32, VNNI products. Holds the stored values (INT4 re-laid per block of 32, INT8 as
    they are) and the stored fp16 scales, nothing else; in-features are padded to 32 with zero weights."""

    def __init__(self, weight: QuantizedWeight) -> None:
        super().__init__(weight)
        self.bits = weight.bits
        values = weight.values()
        self.values = pack_int4_blocks(values) if weight.bits == 4 else pack_int8_blocks(values)
        self.scales = weight.scale.contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = int_dot_linear(rows, self.values, self.scales, self.bits)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    @property
    def nbytes(self) -> int:
        return self.values.numel() + self.scales.numel() * self.scales.element_size()


_LAYOUTS: dict[QuantFormat, type[CpuQuantizedLinear]] = {
    QuantFormat.INT8_ROWWISE: Int8RowwiseLinear,
    QuantFormat.INT8_GROUPWISE: Int8GroupwiseLinear,
    QuantFormat.INT4_ROWWISE: Int4Linear,
    QuantFormat.INT4_GROUPWISE: Int4Linear,
}
CPU_QUANT_FORMATS = tuple(_LAYOUTS)
TORCH_KERNELS, INT_DOT_KERNEL = "torch", "int-dot"
CPU_QUANT_KERNELS = (INT_DOT_KERNEL, TORCH_KERNELS)  # the candidates ``prepare_cpu_quantized(kernel=...)`` takes
# Formats the integer dot-product kernel runs when the user opts in (GLM_ENGINE_CPU_INT_DOT=1): torch's int4 kernel
# is compute-bound (docs/quantization.md#the-integer-dot-product-kernel); INT8 rowwise keeps torch's int8 kernel,
# which streams at read bandwidth with bf16 activations (no activation quantization).
INT_DOT_FORMATS = frozenset({QuantFormat.INT4_ROWWISE, QuantFormat.INT4_GROUPWISE, QuantFormat.INT8_GROUPWISE})


def default_cpu_quant_kernel(quant_format: QuantFormat) -> str:
    """The kernel ``prepare_cpu_quantized`` uses for ``quant_format``: torch's weight-only kernels (the reference
    semantics), or the integer dot-product kernel for INT4 and INT8 groupwise where the user opted in and it builds
    (it is built on this first call)."""
    if quant_format in INT_DOT_FORMATS and requested() and extension_status().available:
        return INT_DOT_KERNEL
    return TORCH_KERNELS


def prepare_cpu_quantized(weight: QuantizedWeight, kernel: str | None = None) -> PackedLinear:
    """The CPU runtime layout of a stored quantized weight (on the CPU), for ``kernel`` (one of
    ``CPU_QUANT_KERNELS``; default :func:`default_cpu_quant_kernel`).

    Groupwise weights whose group size is not a multiple of 32 take the portable path (``DequantizingLinear``, in the
    activations' dtype): re-sharding a TP-quantized reference checkpoint makes groups of ``in / TP`` columns, which
    are multiples of 32 for real widths but not for tiny test models."""
    weight = weight.to("cpu")
    if weight.groups > 1 and int4_kernel_group_size(weight.group_size) is None:
        return DequantizingLinear(weight)
    kernel = kernel or default_cpu_quant_kernel(weight.format)
    if kernel == INT_DOT_KERNEL:
        return IntDotLinear(weight)
    if kernel != TORCH_KERNELS:
        raise BackendError(f"unknown CPU quantized kernel {kernel!r}; choose one of {', '.join(CPU_QUANT_KERNELS)}")
    return _LAYOUTS[weight.format](weight)
