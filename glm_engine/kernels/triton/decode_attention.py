"""Split-K ("flash-decoding") attention for one query row per (batch, head): the cached decode step.

At decode time each head has one query and ``sk`` cached keys, so the work is a matrix-vector product streamed from
the KV cache: memory-bound, and with one program per head far too few programs to use the GPU. The keys are
therefore split across ``num_splits`` programs per head; each computes an online softmax over its tiles in fp32 and
writes its running max ``m``, normaliser ``l`` and unnormalised output ``acc``; :func:`decode_attention` merges the
splits (``sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s``).

Semantics are the op contract's (``OpTable.attention``): ``softmax(q k^T / sqrt(d))`` over keys not ``blocked``, in
fp32, times ``v``. The reference's layer scaling (divide q by ``layer_scale``, multiply the scores by it again in
fp32) only keeps fp16 scores finite; here the scores never exist in fp16 (fp32 from the loads on), so it is the
identity and is not applied. Blocked keys get ``-inf`` rather than the reference's ``-10000 * layer_scale``: both
give an exact 0 after ``exp`` in fp32 whenever a row has an unblocked key, which the contract guarantees.

Grouped-query attention reads the grouped cache in place: with ``g`` key/value heads for ``h`` query heads, query
head ``i`` reads key/value head ``i // (h / g)`` (the op contract's grouping), so no copy of the cache is made. Programs
are numbered ``batch * h + head``, so the query heads of one group run side by side and read the same K/V tiles at
about the same time (the second read of a tile can come from L2 rather than memory; not measured here).

A tile whose keys are all blocked is skipped before its K/V bytes are read. A CUDA-graph decode step attends over
the whole preallocated cache with the not-yet-written positions blocked, so the step costs what the filled part
costs plus one mask byte per empty position.

Importing this module imports triton.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from glm_engine.kernels.triton.configs import DecodeAttentionConfig, next_power_of_2


@triton.jit
def attend_tile(q, k, v, allowed, m_i, l_i, acc):
    """One tile of the online softmax: scores of the ``allowed`` keys of ``k [n, d]`` against ``q [d]`` (scaled,
    fp32), folded into the running max ``m_i``, normaliser ``l_i`` and output ``acc`` with ``v [n, d]``; the tile has
    at least one allowed key, so the new max is finite."""
    scores = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
    scores = tl.where(allowed, scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, axis=0))
    correction = tl.exp(m_i - m_new)
    p = tl.exp(scores - m_new)
    acc = acc * correction + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
    l_i = l_i * correction + tl.sum(p, axis=0)
    return m_new, l_i, acc


@triton.jit
def _split_kernel(
    q_ptr, k_ptr, v_ptr, blocked_ptr, m_ptr, l_ptr, acc_ptr,
    H, GROUP, SK, blocks_per_split, sm_scale,
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_mb, stride_ms,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Online softmax of one (batch, head)'s query over one split of the keys of its key/value head (``GROUP``
    query heads per key/value head); partials in fp32."""
    pid_bh = tl.program_id(0)
    pid_split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    b = pid_bh // H
    h = pid_bh % H
    kv_h = h // GROUP
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_d * stride_qd, mask=mask_d, other=0.0)
    q = q.to(tl.float32) * sm_scale
    m_i = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), axis=0)
    l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), axis=0)
    acc = tl.zeros([BLOCK_D], tl.float32)
    k_base = k_ptr + b * stride_kb + kv_h * stride_kh
    v_base = v_ptr + b * stride_vb + kv_h * stride_vh
    for i in range(0, blocks_per_split):
        offs_n = (pid_split * blocks_per_split + i) * BLOCK_N + tl.arange(0, BLOCK_N)
        in_range = offs_n < SK
        blocked = tl.load(blocked_ptr + b * stride_mb + offs_n * stride_ms, mask=in_range, other=1)
        allowed = (blocked == 0) & in_range
        if tl.sum(allowed.to(tl.int32), axis=0) > 0:  # skip fully blocked tiles without reading K/V
            kv_mask = allowed[:, None] & mask_d[None, :]
            k = tl.load(k_base + offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
            v = tl.load(v_base + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
            m_i, l_i, acc = attend_tile(q, k, v, allowed, m_i, l_i, acc)
    slot = pid_bh * num_splits + pid_split
    tl.store(m_ptr + slot, m_i)
    tl.store(l_ptr + slot, l_i)
    tl.store(acc_ptr + slot * BLOCK_D + offs_d, acc)


def combine_splits(m: torch.Tensor, norm: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Merge per-split partials ``m, norm [n, splits]``, ``acc [n, splits, d]`` into ``[n, d]`` (fp32).

    Splits that saw only blocked keys have ``m = -inf, norm = 0, acc = 0`` and weigh exactly 0; ``M`` is finite because
    some split of every row saw an unblocked key.
    """
    top = m.max(dim=1, keepdim=True).values
    weight = torch.exp(m - top)
    return (acc * weight.unsqueeze(-1)).sum(1) / (norm * weight).sum(1, keepdim=True)


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocked: torch.Tensor, config: DecodeAttentionConfig
) -> torch.Tensor:
    """``q [b, h, 1, d]``, ``k, v [b, g, sk, d]`` with ``g`` dividing ``h`` (any strides: cache views), ``blocked``
    bool broadcastable to ``[b, 1, 1, sk]`` -> ``[b, h, 1, d]`` in q's dtype (fp16, bf16 or fp32). Query head ``i``
    reads key/value head ``i // (h / g)``."""
    b, h, sq, d = q.shape
    groups, sk = k.shape[1], k.shape[2]
    if sq != 1:
        raise ValueError(f"decode attention takes one query row per head, got {sq}")
    if v.shape[1] != groups or groups == 0 or h % groups:
        raise ValueError(f"key/value heads ({groups}, {v.shape[1]}) must be equal and divide the {h} query heads")
    mask = blocked.expand(blocked.shape[0], 1, 1, sk)[:, 0, 0, :]
    if mask.shape[0] not in (1, b):
        raise ValueError(f"blocked has batch {mask.shape[0]}, expected 1 or {b}")
    mask = mask.view(torch.uint8) if mask.dtype == torch.bool else (mask != 0).to(torch.uint8)
    stride_mb = 0 if mask.shape[0] == 1 else mask.stride(0)
    block_d = next_power_of_2(d)
    blocks = triton.cdiv(sk, config.block_n)
    blocks_per_split = triton.cdiv(blocks, config.num_splits)
    splits = triton.cdiv(blocks, blocks_per_split)
    m = torch.empty(b * h, splits, dtype=torch.float32, device=q.device)
    norm = torch.empty_like(m)
    acc = torch.empty(b * h, splits, block_d, dtype=torch.float32, device=q.device)
    _split_kernel[(b * h, splits)](
        q, k, v, mask, m, norm, acc,
        h, h // groups, sk, blocks_per_split, 1.0 / math.sqrt(d),
        q.stride(0), q.stride(1), q.stride(3),
        k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        v.stride(0), v.stride(1), v.stride(2), v.stride(3),
        stride_mb, mask.stride(1),
        HEAD_DIM=d, BLOCK_D=block_d, BLOCK_N=config.block_n,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    out = combine_splits(m, norm, acc)[:, :d]
    return out.to(q.dtype).view(b, h, 1, d)
