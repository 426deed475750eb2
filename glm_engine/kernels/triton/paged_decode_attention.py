"""Paged ("varlen") decode attention: one query row per (sequence, head) of a serving step, each sequence reading its
own keys and values from the KV block pool through its slot table, all sequences in one launch.

The split-K scheme of :mod:`glm_engine.kernels.triton.decode_attention` (online softmax per split in fp32, splits
merged by :func:`~glm_engine.kernels.triton.decode_attention.combine_splits`), with two differences: the keys of
sequence ``b`` are ``pool[slots[b, n]]`` for ``n < lengths[b]`` (no mask: a decode row attends to every key before it),
and a split always covers the same ``blocks_per_split`` tiles from a sequence's first key, so how a sequence's keys
are split does not depend on the other sequences of the step. Grouped key/value heads are read in place (query head
``i`` reads key/value head ``i // (h / g)``).

Importing this module imports triton.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from glm_engine.kernels.triton.configs import DecodeAttentionConfig, next_power_of_2
from glm_engine.kernels.triton.decode_attention import attend_tile, combine_splits

# A split's tiles, the same for every sequence of every step: 512 keys, so a 128K-token sequence has 256 splits.
PAGED_BLOCKS_PER_SPLIT = 8


@triton.jit
def _paged_split_kernel(
    q_ptr, k_ptr, v_ptr, slots_ptr, lengths_ptr, m_ptr, l_ptr, acc_ptr,
    H, GROUP, blocks_per_split, sm_scale,
    stride_qb, stride_qh, stride_qd,
    stride_ks, stride_kh, stride_kd,
    stride_vs, stride_vh, stride_vd,
    stride_sb,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Online softmax of one (sequence, head)'s query over one split of the sequence's keys; partials in fp32."""
    pid_bh = tl.program_id(0)
    pid_split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    b = pid_bh // H
    h = pid_bh % H
    kv_h = h // GROUP
    length = tl.load(lengths_ptr + b)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_d * stride_qd, mask=mask_d, other=0.0)
    q = q.to(tl.float32) * sm_scale
    m_i = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), axis=0)
    l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), axis=0)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for i in range(0, blocks_per_split):
        offs_n = (pid_split * blocks_per_split + i) * BLOCK_N + tl.arange(0, BLOCK_N)
        in_range = offs_n < length
        if tl.sum(in_range.to(tl.int32), axis=0) > 0:  # past the sequence's end: nothing to read
            slot = tl.load(slots_ptr + b * stride_sb + offs_n, mask=in_range, other=0)
            kv_mask = in_range[:, None] & mask_d[None, :]
            k_rows = k_ptr + slot[:, None] * stride_ks + kv_h * stride_kh + offs_d[None, :] * stride_kd
            v_rows = v_ptr + slot[:, None] * stride_vs + kv_h * stride_vh + offs_d[None, :] * stride_vd
            k = tl.load(k_rows, mask=kv_mask, other=0.0)
            v = tl.load(v_rows, mask=kv_mask, other=0.0)
            m_i, l_i, acc = attend_tile(q, k, v, in_range, m_i, l_i, acc)
    slot_out = pid_bh * num_splits + pid_split
    tl.store(m_ptr + slot_out, m_i)
    tl.store(l_ptr + slot_out, l_i)
    tl.store(acc_ptr + slot_out * BLOCK_D + offs_d, acc)


def paged_decode_attention(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slots: torch.Tensor,
    lengths: torch.Tensor,
    config: DecodeAttentionConfig,
    blocks_per_split: int = PAGED_BLOCKS_PER_SPLIT,
) -> torch.Tensor:
    """``q [n, h, d]`` (one row per sequence), ``k_pool, v_pool [pool slots, g, d]`` with ``g`` dividing ``h``,
    ``slots [n, longest]`` (int64; each row's first ``lengths[i]`` entries are its keys' slots) -> ``[n, h, d]`` in
    q's dtype. A split is ``blocks_per_split`` tiles of ``config.block_n`` keys, counted from each sequence's start
    (``config.num_splits`` is not used: the splits follow the longest sequence)."""
    n, h, d = q.shape
    groups = k_pool.shape[1]
    if v_pool.shape[1] != groups or groups == 0 or h % groups:
        raise ValueError(f"key/value heads ({groups}, {v_pool.shape[1]}) must be equal and divide the {h} query heads")
    if slots.shape[0] != n or lengths.shape != (n,):
        raise ValueError(f"slots {tuple(slots.shape)} and lengths {tuple(lengths.shape)} must have {n} rows")
    block_d = next_power_of_2(d)
    splits = max(1, triton.cdiv(triton.cdiv(slots.shape[1], config.block_n), blocks_per_split))
    m = torch.empty(n * h, splits, dtype=torch.float32, device=q.device)
    norm = torch.empty_like(m)
    acc = torch.empty(n * h, splits, block_d, dtype=torch.float32, device=q.device)
    slots = slots.to(torch.int64).contiguous()
    _paged_split_kernel[(n * h, splits)](
        q, k_pool, v_pool, slots, lengths.to(torch.int64).contiguous(), m, norm, acc,
        h, h // groups, blocks_per_split, 1.0 / math.sqrt(d),
        q.stride(0), q.stride(1), q.stride(2),
        k_pool.stride(0), k_pool.stride(1), k_pool.stride(2),
        v_pool.stride(0), v_pool.stride(1), v_pool.stride(2),
        slots.stride(0),
        HEAD_DIM=d, BLOCK_D=block_d, BLOCK_N=config.block_n,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return combine_splits(m, norm, acc)[:, :d].to(q.dtype).view(n, h, d)
