"""The decoder block, written once: attention and MLP, each part implemented as the family's description chooses.

``normed = LN(x)``; attention (QKV per head ``[q | k | v]``, rotary, KV cache, layer-scaled fp32-softmax attention,
the row-parallel output projection); the residual; ``LN``; the MLP (column-parallel up projection, activation,
row-parallel down projection); the residual (``docs/architecture.md``, ``docs/glm-semantics.md``).

Under tensor parallelism each rank holds ``heads / tp`` heads and its weight shards: QKV and the up projection are
column-parallel (a GLU's shard is ``[linear slice; gate slice]``, so the activation runs unchanged on it); the output
and down projections are row-parallel (local product, all-reduce, then the bias). The communicator makes every
collective the identity in one process, so this code is the same at every TP degree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from glm_engine.model.kv_cache import KVCache
from glm_engine.model.parts import Activation, DenseBias, Norm, Residual, Rotary
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
    x = residual(model, normed, attention(model, index, layer, normed, rotations, blocked, cache))
    normed = norm(model, x, layer.post_attention_layernorm_weight, layer.post_attention_layernorm_bias)
    return residual(model, normed, mlp(model, layer, normed))


def norm(model: DecoderModel, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The family's normalisation over the hidden dimension."""
    if model.parts.norm is Norm.LAYERNORM:
        return model.ops.layernorm(x, weight, bias, model.config.layernorm_epsilon)
    raise NotImplementedError(model.parts.norm)


def residual(model: DecoderModel, normed: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    if model.parts.residual is Residual.DEEPNORM:
        return model.ops.deepnorm_residual(normed, branch, model.parts.deepnorm_alpha)
    raise NotImplementedError(model.parts.residual)


def attention(
    model: DecoderModel,
    index: int,
    layer: LayerWeights,
    normed: torch.Tensor,
    rotations: Rotations,
    blocked: torch.Tensor,
    cache: KVCache | None,
) -> torch.Tensor:
    """Self-attention with the query-key layer scaling ``index + 1`` (the reference's fp16 safeguard)."""
    ops, d, heads = model.ops, model.config.head_dim, model.local_heads
    b, s, _ = normed.shape
    qkv = ops.linear(normed, layer.query_key_value_weight, layer.query_key_value_bias)
    q, k, v = qkv.view(b, s, heads, 3 * d).split(d, dim=-1)
    q, k = rotate(model, q, k, rotations)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, heads, s, d]
    if cache is not None:
        k, v = cache.update(index, k, v)
    context = ops.attention(q, k, v, blocked, layer_scale=float(index + 1))
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
    halves = [ops.rotary(qh, kh, cos, sin) for qh, kh, (cos, sin) in zip(q.chunk(2, -1), k.chunk(2, -1), rotations)]
    return torch.cat([h[0] for h in halves], dim=-1), torch.cat([h[1] for h in halves], dim=-1)


def rotations_for(model: DecoderModel, position_ids: torch.Tensor) -> Rotations:
    """Per-token ``(cos, sin)`` from the model's tables, one pair per position row (the reference's embedding
    lookup of the table)."""
    ops = model.ops
    rows = [position_ids] if model.parts.rotary is Rotary.WHOLE_HEAD else [position_ids[:, 0], position_ids[:, 1]]
    return [(ops.embedding(r, model.cos).unsqueeze(2), ops.embedding(r, model.sin).unsqueeze(2)) for r in rows]


def mlp(model: DecoderModel, layer: LayerWeights, normed: torch.Tensor) -> torch.Tensor:
    ops = model.ops
    hidden = ops.linear(normed, layer.dense_h_to_4h_weight, layer.dense_h_to_4h_bias)
    activation = model.parts.activation
    hidden = ops.geglu(hidden) if activation is Activation.GEGLU else ops.gelu(hidden)
    return row_parallel(model, hidden, layer.dense_4h_to_h_weight, layer.dense_4h_to_h_bias)


def row_parallel(
    model: DecoderModel, x: torch.Tensor, weight: torch.Tensor | PackedLinear, bias: torch.Tensor
) -> torch.Tensor:
    """A row-parallel linear: SAT's RowParallelLinear adds the bias after the (all-reduced) product, rounding apart
    in fp16; an ``nn.Linear`` fuses it into the GEMM, which tensor parallelism can only do after the reduce."""
    if model.parts.dense_bias is DenseBias.FUSED and model.comm.world_size == 1:
        return model.ops.linear(x, weight, bias)
    return model.comm.all_reduce(model.ops.linear(x, weight, None)) + bias
