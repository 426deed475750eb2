"""Fused dequant-GEMM Triton kernels: ``x @ W.T`` read straight from glm-engine's stored INT8/INT4 weight.

The weight is never expanded to fp16 in memory: each program loads int8 bytes (INT4: two values per byte, the even
column in the high nibble, recovered with arithmetic shifts), converts them in registers and multiplies them by the
activation tile with fp32 accumulation. Quantized values are integers in [-127, 127], exact in fp16 and bf16, so the
``tl.dot`` operands lose nothing; the fp16 scales are applied in fp32 to each block's partial product (groupwise) or
to the finished row (rowwise). That differs from the reference's ``half(q) * scale`` only by that product's fp16
rounding, which this path skips.

INT4 columns are consumed in even/odd halves: ``x[:, 0::2] @ high_nibbles + x[:, 1::2] @ low_nibbles``, which avoids
interleaving the nibbles in registers (the activation tile is small and cached; the weight is read once, coalesced).

Ragged edges (K, N or M not a multiple of the tile) are masked loads, and every masked load whose values reach a sum
or a ``tl.dot`` passes ``other=0``: ``tl.load`` documents masked-out lanes as undefined unless ``other`` is given
(NVIDIA and AMD happen to zero them; another backend need not). ``tests/test_triton_ragged.py`` runs the kernels
with masked lanes filled with NaN to hold them to that.

A decode product split along K (``config.split_k > 1``) takes two launches: the decode kernel writes one fp32 partial
per split, and :func:`_sum_splits_kernel` adds them in split order and casts to the activation dtype in the same
pass. That replaces a ``sum`` and a cast (three launches in all) and stays deterministic; ``tl.atomic_add`` into an
fp32 buffer would also need two launches (zeroing or the cast) and its sum order, hence its rounding, would change
from run to run, which this project's conformance and run-to-run determinism do not allow.

Importing this module imports triton; :mod:`glm_engine.kernels.triton.linear` imports it only when a weight is
prepared.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glm_engine.kernels.triton import interpreting
from glm_engine.kernels.triton.configs import (
    SPLIT_SUM_BLOCK,
    SPLIT_SUM_WARPS,
    KernelConfig,
    Variant,
    check_config,
)


@triton.jit
def _weight_halves(w_ptr, offs_n, offs_p, mask, stride_wn, K_MAJOR: tl.constexpr):
    """High and low nibbles of a packed INT4 tile, as int8 (``[BLOCK_N, P]``, or ``[P, BLOCK_N]`` when K_MAJOR)."""
    if K_MAJOR:
        packed = tl.load(w_ptr + offs_n[None, :] * stride_wn + offs_p[:, None], mask=mask, other=0)
    else:
        packed = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_p[None, :], mask=mask, other=0)
    high = packed >> 4
    low = (packed << 4).to(tl.int8) >> 4
    return high, low


@triton.jit
def _int_to(values, dtype: tl.constexpr):
    """Integer tile to ``dtype``; bf16 goes through fp32 (Triton 3.9's interpreter casts int8 to bf16 bitwise, and the
    GPU backends lower integer-to-bf16 through fp32 anyway)."""
    if dtype == tl.bfloat16:
        return values.to(tl.float32).to(dtype)
    return values.to(dtype)


@triton.jit
def _row_in_range(offs, row, M):
    """``row < M`` as a vector shaped like ``offs``: Triton 3.9's interpreter rejects a load mask made by ``&`` of a
    vector and a scalar comparison ("mask has unsupported dtype"); the compiler folds the broadcast away."""
    return (tl.zeros_like(offs) + row) < M


@triton.jit
def _decode_kernel(
    x_ptr, w_ptr, s_ptr, out_ptr,
    M, N, K, stride_xm, stride_wn, stride_sn, stride_split, stride_om, blocks_per_split,
    INT4: tl.constexpr, GROUPED: tl.constexpr, GROUP_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """One ``[BLOCK_M, BLOCK_N]`` output tile over one K split, on the vector units (no tl.dot).

    Each K block's weight tile is loaded and converted to fp32 once, then reused for every row of ``x`` in turn
    (``tl.static_range`` unrolls the rows): the live registers are one ``[BLOCK_N, BLOCK_K]`` tile and one row's
    product of the same shape whatever ``BLOCK_M`` is, where a ``[BLOCK_M, BLOCK_N, BLOCK_K]`` broadcast product
    would grow with the rows (``configs.decode_values_per_thread``). Every masked load that feeds a sum has
    ``other=0``: Triton leaves masked-out lanes undefined otherwise.
    """
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    rows = tl.arange(0, BLOCK_M)
    offs_m = pid_m * BLOCK_M + rows
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in range(0, blocks_per_split):
        k0 = (pid_k * blocks_per_split + i) * BLOCK_K
        part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if INT4:
            offs_p = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            mask_p = offs_p < K // 2
            high, low = _weight_halves(w_ptr, offs_n, offs_p, mask_n[:, None] & mask_p[None, :], stride_wn, False)
            high = high.to(tl.float32)
            low = low.to(tl.float32)
            for r in tl.static_range(BLOCK_M):
                row = pid_m * BLOCK_M + r
                x_row = x_ptr + row * stride_xm + 2 * offs_p
                x_mask = mask_p & _row_in_range(offs_p, row, M)
                x_even = tl.load(x_row, mask=x_mask, other=0.0).to(tl.float32)
                x_odd = tl.load(x_row + 1, mask=x_mask, other=0.0).to(tl.float32)
                dot = tl.sum(high * x_even[None, :], axis=1) + tl.sum(low * x_odd[None, :], axis=1)
                part = tl.where(rows[:, None] == r, dot[None, :], part)
        else:
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            w_mask = mask_n[:, None] & mask_k[None, :]
            w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], mask=w_mask, other=0).to(tl.float32)
            for r in tl.static_range(BLOCK_M):
                row = pid_m * BLOCK_M + r
                x_mask = mask_k & _row_in_range(offs_k, row, M)
                x = tl.load(x_ptr + row * stride_xm + offs_k, mask=x_mask, other=0.0).to(tl.float32)
                part = tl.where(rows[:, None] == r, tl.sum(w * x[None, :], axis=1)[None, :], part)
        if GROUPED:
            group = tl.minimum(k0, K - 1) // GROUP_SIZE  # a last split may run past K: its part is 0
            scale = tl.load(s_ptr + offs_n * stride_sn + group, mask=mask_n, other=0.0)
            acc += part * scale.to(tl.float32)[None, :]
        else:
            acc += part
    if not GROUPED:
        acc *= tl.load(s_ptr + offs_n * stride_sn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + pid_k * stride_split + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _sum_splits_kernel(part_ptr, out_ptr, numel, splits, stride_split, BLOCK: tl.constexpr):
    """``out = sum over s of part[s]``, cast to ``out``'s dtype: the split-K partials added in the fixed order
    0, 1, ..., splits - 1 (deterministic: the same bits on every run, unlike fp32 atomics)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, splits):
        total += tl.load(part_ptr + s * stride_split + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _prefill_kernel(
    x_ptr, w_ptr, s_ptr, out_ptr,
    M, N, K, stride_xm, stride_wn, stride_sn, stride_om,
    INT4: tl.constexpr, GROUPED: tl.constexpr, GROUP_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """One ``[BLOCK_M, BLOCK_N]`` output tile with tl.dot; weight tiles are dequantized to x's dtype in registers."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pids_in_group = GROUP_M * num_pid_n
    first_m = (pid // pids_in_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % pids_in_group) % group_rows
    pid_n = (pid % pids_in_group) // group_rows
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if INT4:
            offs_p = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            mask_p = offs_p < K // 2
            high, low = _weight_halves(w_ptr, offs_n, offs_p, mask_p[:, None] & mask_n[None, :], stride_wn, True)
            x_mask = mask_m[:, None] & mask_p[None, :]
            x_even = tl.load(x_ptr + offs_m[:, None] * stride_xm + 2 * offs_p[None, :], mask=x_mask, other=0.0)
            x_odd = tl.load(x_ptr + offs_m[:, None] * stride_xm + 2 * offs_p[None, :] + 1, mask=x_mask, other=0.0)
            part = tl.dot(x_even.to(DOT_DTYPE), _int_to(high, DOT_DTYPE))
            part = tl.dot(x_odd.to(DOT_DTYPE), _int_to(low, DOT_DTYPE), part)
        else:
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            w_mask = mask_k[:, None] & mask_n[None, :]
            w = tl.load(w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None], mask=w_mask, other=0)
            x_mask = mask_m[:, None] & mask_k[None, :]
            xb = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=x_mask, other=0.0)
            part = tl.dot(xb.to(DOT_DTYPE), _int_to(w, DOT_DTYPE))
        if GROUPED:
            scale = tl.load(s_ptr + offs_n * stride_sn + k0 // GROUP_SIZE, mask=mask_n, other=0.0)
            acc += part * scale.to(tl.float32)[None, :]
        else:
            acc += part
    if not GROUPED:
        acc *= tl.load(s_ptr + offs_n * stride_sn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """The tl.dot operand type: the activations' own, except bf16 under the interpreter, whose tl.dot returns garbage
    for bf16 operands (Triton 3.9: a 16x16 bf16 dot is off by 1e10). There the tiles go in as fp32, the same arithmetic
    as a bf16 MMA with fp32 accumulation since both operands are exact bf16 values; the GPU check covers the real MMA.
    """
    if dtype == torch.bfloat16 and interpreting():
        return tl.float32
    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]


def dequant_matmul(
    x: torch.Tensor, stored: torch.Tensor, scale: torch.Tensor, bits: int, config: KernelConfig
) -> torch.Tensor:
    """``x [M, K] @ W.T -> [M, N]`` in ``x``'s dtype, with ``W`` given by its stored form (``stored``, ``scale``).

    ``x`` is fp16 or bf16; ``stored`` int8 ``[N, K]`` or packed INT4 ``[N, K / 2]``, row-major; ``scale`` fp16
    ``[N, groups]``. The caller checks formats (see ``configs.unsupported_reason``); ``config`` picks the kernel.
    """
    m, k = x.shape
    n, groups = scale.shape
    group_size = k // groups if groups > 1 else None
    check_config(config, bits, group_size)
    x = x.contiguous()
    common = dict(
        INT4=bits == 4,
        GROUPED=group_size is not None,
        GROUP_SIZE=group_size or k,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if config.variant is Variant.PREFILL:
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
        grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n),)
        _prefill_kernel[grid](
            x, stored, scale, out, m, n, k, x.stride(0), stored.stride(0), scale.stride(0), out.stride(0),
            GROUP_M=config.group_m, DOT_DTYPE=_dot_dtype(x.dtype), **common,
        )  # fmt: skip
        return out
    k_blocks = triton.cdiv(k, config.block_k)
    blocks_per_split = triton.cdiv(k_blocks, config.split_k)
    splits = triton.cdiv(k_blocks, blocks_per_split)
    # One split writes the output directly; several write fp32 partials that one more launch adds and casts.
    out = torch.empty(splits, m, n, dtype=x.dtype if splits == 1 else torch.float32, device=x.device)
    grid = (triton.cdiv(n, config.block_n), splits, triton.cdiv(m, config.block_m))
    _decode_kernel[grid](
        x, stored, scale, out, m, n, k, x.stride(0), stored.stride(0), scale.stride(0), out.stride(0), out.stride(1),
        blocks_per_split, **common,
    )  # fmt: skip
    if splits == 1:
        return out[0]
    summed = torch.empty(m, n, dtype=x.dtype, device=x.device)
    _sum_splits_kernel[(triton.cdiv(m * n, SPLIT_SUM_BLOCK),)](
        out, summed, m * n, splits, out.stride(0), BLOCK=SPLIT_SUM_BLOCK, num_warps=SPLIT_SUM_WARPS
    )
    return summed
