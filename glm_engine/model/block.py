"""The decoder block, written once: attention and MLP, each part implemented as the family's description chooses.

``normed = norm(x)``; attention (fused QKV, rotary, KV cache, fp32-softmax attention over grouped or per-head keys,
the row-parallel output projection); the residual (DeepNorm on the norm's output, or pre-norm on the input, with an
optional norm on the branch); ``norm``; the MLP (column-parallel up projection, activation, row-parallel down
projection); the residual (``docs/architecture.md``, ``docs/families.md``).

Under tensor parallelism each rank holds ``heads / tp`` heads and its weight shards: QKV and the up projection are
column-parallel (a GLU's shard is ``[linear slice; gate slice]``, so the activation runs unchanged on it); the output
and down projections are row-parallel (local product, all-reduce, then the bias). The communicator makes every
collective the identity in one process, so this code is the same at every TP degree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from glm_engine.model.kv_cache import KVCache
from glm_engine.model.parts import Activation, DenseBias, Norm, QKVLayout, Residual, Rotary
from glm_engine.model.weights import LayerWeights
from glm_engine.ops.interface import PackedLinear

if TYPE_CHECKING:
    from glm_engine.model.graph import DecoderModel

# Per-token (cos, sin) [b, s, 1, n] for each rotated part of a head, in the order the parts sit in the head.
Rotations = list[tuple[torch.Tensor, torch.Tensor]]


def decoder_block(
    model: DecoderModel,
    index: int,
    layer: LayerWeights,
    x: torch.Tensor,
    rotations: Rotations,
    blocked: torch.Tensor,
    cache: KVCache | None,
) -> torch.Tensor:
    """One layer: ``x [b, s, h]`` -> ``[b, s, h]``."""
    normed = norm(model, x, layer.input_layernorm_weight, layer.input_layernorm_bias)
    branch = attention(model, index, layer, normed, rotations, blocked, cache)
    x = residual(model, x, normed, branch, layer.post_self_attn_layernorm_weight)
    normed = norm(model, x, layer.post_attention_layernorm_weight, layer.post_attention_layernorm_bias)
    return residual(model, x, normed, mlp(model, layer, normed), layer.post_mlp_layernorm_weight)


def norm(model: DecoderModel, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The family's normalisation over the hidden dimension."""
    eps = model.config.layernorm_epsilon
    if model.parts.norm is Norm.LAYERNORM:
        return model.ops.layernorm(x, weight, bias, eps)
    if model.parts.norm is Norm.RMSNORM:
        return model.ops.rmsnorm(x, weight, eps, model.parts.norm_weight_in_fp32)
    raise NotImplementedError(model.parts.norm)


def residual(
    model: DecoderModel, x: torch.Tensor, normed: torch.Tensor, branch: torch.Tensor, branch_norm: torch.Tensor | None
) -> torch.Tensor:
    """A branch rejoins the stream: DeepNorm scales the norm's output; pre-norm adds to the block's input, after a
    norm of the branch where the family has one (GLM-4-0414's ``post_self_attn``/``post_mlp`` norms)."""
    parts = model.parts
    if parts.residual is Residual.DEEPNORM:
        return model.ops.deepnorm_residual(normed, branch, parts.deepnorm_alpha)
    if parts.residual is Residual.PRENORM:
        if parts.post_branch_norm:
            branch = norm(model, branch, branch_norm, None)
        return x + branch
    raise NotImplementedError(parts.residual)


def attention(
    model: DecoderModel,
    index: int,
    layer: LayerWeights,
    normed: torch.Tensor,
    rotations: Rotations,
    blocked: torch.Tensor,
    cache: KVCache | None,
) -> torch.Tensor:
    """Self-attention (with the reference's query-key layer scaling ``index + 1`` where the family has it)."""
    ops, d, heads, groups = model.ops, model.config.head_dim, model.local_heads, model.local_kv_heads
    b, s, _ = normed.shape
    qkv = ops.linear(normed, layer.query_key_value_weight, layer.query_key_value_bias)
    if model.parts.qkv is QKVLayout.PER_HEAD:
        q, k, v = qkv.view(b, s, heads, 3 * d).split(d, dim=-1)
    else:
        q, k, v = qkv.split((heads * d, groups * d, groups * d), dim=-1)
        q, k, v = q.view(b, s, heads, d), k.view(b, s, groups, d), v.view(b, s, groups, d)
    q, k = rotate(model, q, k, rotations)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, heads or groups, s, d]
    layer_scale = float(index + 1) if model.parts.layer_scaled_attention else 1.0
    if cache is None:
        context = ops.attention(q, k, v, blocked, layer_scale=layer_scale)
    else:  # the cache decides which keys each query sees (contiguous rows, or the serving core's paged sequences)
        context = cache.attend(index, q, k, v, blocked, ops, layer_scale)
    context = context.transpose(1, 2).reshape(b, s, heads * d)
    return row_parallel(model, context, layer.dense_weight, layer.dense_bias)


def rotate(
    model: DecoderModel, q: torch.Tensor, k: torch.Tensor, rotations: Rotations
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding of ``q, k [b, s, heads, d]`` by the family's layout."""
    ops = model.ops
    if model.parts.rotary is Rotary.WHOLE_HEAD:
        ((cos, sin),) = rotations
        return ops.rotary(q, k, cos, sin)
    if model.parts.rotary is Rotary.PARTIAL_INTERLEAVED:
        ((cos, sin),) = rotations
        n = model.parts.rotary_dims
        q_rot, k_rot = ops.rotary(pairs_to_halves(q[..., :n]), pairs_to_halves(k[..., :n]), cos, sin)
        return (
            torch.cat((halves_to_pairs(q_rot), q[..., n:]), dim=-1),
            torch.cat((halves_to_pairs(k_rot), k[..., n:]), dim=-1),
        )
    halves = [ops.rotary(qh, kh, cos, sin) for qh, kh, (cos, sin) in zip(q.chunk(2, -1), k.chunk(2, -1), rotations)]
    return torch.cat([h[0] for h in halves], dim=-1), torch.cat([h[1] for h in halves], dim=-1)


def pairs_to_halves(x: torch.Tensor) -> torch.Tensor:
    """``(x0, x1, x2, x3, ...)`` -> ``(x0, x2, ..., x1, x3, ...)``: GPT-J's pairs ``(2i, 2i + 1)`` become the pairs
    ``(i, i + n/2)`` of the rotate-half op contract, so one rotary op serves both layouts with the same arithmetic
    (``x0 * cos - x1 * sin`` and ``x1 * cos + x0 * sin``, each product rounded, then the sum)."""
    return x.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)


def halves_to_pairs(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pairs_to_halves`."""
    return x.unflatten(-1, (2, -1)).transpose(-1, -2).flatten(-2)


def rotations_for(model: DecoderModel, position_ids: torch.Tensor) -> Rotations:
    """Per-token ``(cos, sin)`` from the model's tables, one pair per position row (the reference's embedding
    lookup of the table)."""
    ops = model.ops
    rows = [position_ids[:, 0], position_ids[:, 1]] if model.parts.rotary is Rotary.TWO_HALVES else [position_ids]
    return [(ops.embedding(r, model.cos).unsqueeze(2), ops.embedding(r, model.sin).unsqueeze(2)) for r in rows]


def mlp(model: DecoderModel, layer: LayerWeights, normed: torch.Tensor) -> torch.Tensor:
    ops = model.ops
    hidden = ops.linear(normed, layer.dense_h_to_4h_weight, layer.dense_h_to_4h_bias)
    activation = model.parts.activation
    if activation is Activation.GEGLU:
        hidden = ops.geglu(hidden)
    elif activation is Activation.SWIGLU:
        hidden = ops.swiglu(hidden)
    else:
        hidden = ops.gelu(hidden)
    return row_parallel(model, hidden, layer.dense_4h_to_h_weight, layer.dense_4h_to_h_bias)


def row_parallel(
    model: DecoderModel, x: torch.Tensor, weight: torch.Tensor | PackedLinear, bias: torch.Tensor | None
) -> torch.Tensor:
    """A row-parallel linear: SAT's RowParallelLinear adds the bias after the (all-reduced) product, rounding apart
    in fp16; an ``nn.Linear`` fuses it into the GEMM, which tensor parallelism can only do after the reduce."""
    if bias is None or (model.parts.dense_bias is DenseBias.FUSED and model.comm.world_size == 1):
        return model.comm.all_reduce(model.ops.linear(x, weight, bias))
    return model.comm.all_reduce(model.ops.linear(x, weight, None)) + bias
