"""The GLM-130B forward pass, written once against the op interface (glm130b.md section 1.3).

embedding -> per layer [LN_in; QKV (heads interleaved [q|k|v] per head); rotary; layer-scaled fp32-softmax
attention; dense; ``alpha * LN_in_out + attn``; LN_post; GeGLU MLP; ``alpha * LN_post_out + mlp``] -> final LN ->
tied output projection. ``alpha = sqrt(2 * num_layers)``.

Under tensor parallelism (glm130b.md sections 1.3, 1.11) each rank holds ``heads / tp`` heads and its weight shards:
QKV and ``dense_h_to_4h`` are column-parallel (the GeGLU shard is ``[linear slice; gate slice]``, so ``geglu`` runs
unchanged on it), ``attention.dense`` and ``dense_4h_to_h`` row-parallel (local product, all-reduce, then the
bias), the embedding vocab-parallel, and the logits the local product gathered along the vocab. The communicator
makes every collective the identity in one process, so this code is the same at every TP degree.
"""

from __future__ import annotations

import torch

from glm_engine.backends.base import RunnerCapabilities
from glm_engine.config import GLMConfig
from glm_engine.model.kv_cache import KVCache
from glm_engine.model.rotary import rotary_table
from glm_engine.model.weights import GLMWeights, LayerWeights
from glm_engine.ops.interface import DecodeStepper, OpTable
from glm_engine.parallel.communicator import Communicator
from glm_engine.parallel.vocab import vocab_parallel_embedding


class GLMModel:
    """A loaded GLM model bound to one backend's op table; implements the ``ModelRunner`` interface.

    ``weights`` are this rank's shards when ``comm`` spans several ranks (default: one process, full weights).
    """

    def __init__(self, config: GLMConfig, weights: GLMWeights, ops: OpTable, comm: Communicator | None = None) -> None:
        self.config = config
        self.weights = weights
        self.ops = ops
        self.comm = comm if comm is not None else Communicator()
        self.local_heads = config.num_attention_heads // self.comm.world_size
        self.device = ops.device
        self.dtype = ops.dtype
        self.cos, self.sin = rotary_table(config, ops.dtype, ops.device)
        self.cuda_graphs: bool | None = None  # decode steps as CUDA graphs: None = the default (generation.cuda_graph)
        self.capabilities = RunnerCapabilities(kv_cache=True, tensor_parallel=self.comm.world_size, op_level=True)

    def decode_stepper(self, steps: int | None = None, requested: bool | None = None) -> DecodeStepper:
        return self.ops.decode_stepper(self, steps, requested)

    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        c = self.config
        return KVCache(c.num_layers, batch_size, self.local_heads, max_length, c.head_dim, self.dtype, self.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        blocked: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits ``[b, s, vocab]`` (``[b, 1, vocab]`` with ``last_only``) for ``input_ids [b, s]``, on every rank.

        ``position_ids [b, s]``; ``blocked`` bool ``[b or 1, 1, s, cached + s]``, True = may not attend. With a
        cache, the new keys/values are appended after the cached ones. Differentiable when the weights require
        gradients (training the demo model); inference callers run it under ``torch.inference_mode()``.
        """
        ops, w = self.ops, self.weights
        x = vocab_parallel_embedding(ops, input_ids, w.word_embeddings, self.comm)
        cos = ops.embedding(position_ids, self.cos).unsqueeze(2)  # [b, s, 1, d], the reference's F.embedding lookup
        sin = ops.embedding(position_ids, self.sin).unsqueeze(2)
        for index, layer in enumerate(w.layers):
            x = self._layer(index, layer, x, cos, sin, blocked, cache)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        if last_only:
            x = x[:, -1:]
        x = ops.layernorm(x, w.final_layernorm_weight, w.final_layernorm_bias, self.config.layernorm_epsilon)
        return self.comm.all_gather(ops.linear(x, w.output, None))

    def _layer(
        self,
        index: int,
        layer: LayerWeights,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        blocked: torch.Tensor,
        cache: KVCache | None,
    ) -> torch.Tensor:
        ops, c = self.ops, self.config
        b, s, _ = x.shape
        heads = self.local_heads
        alpha, eps = c.deepnorm_alpha, c.layernorm_epsilon

        normed = ops.layernorm(x, layer.input_layernorm_weight, layer.input_layernorm_bias, eps)
        qkv = ops.linear(normed, layer.query_key_value_weight, layer.query_key_value_bias)
        q, k, v = qkv.view(b, s, heads, 3 * c.head_dim).split(c.head_dim, dim=-1)
        q, k = ops.rotary(q, k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, heads, s, d]
        if cache is not None:
            k, v = cache.update(index, k, v)
        context = ops.attention(q, k, v, blocked, layer_scale=float(index + 1))
        context = context.transpose(1, 2).reshape(b, s, heads * c.head_dim)
        attn = self._row_parallel_linear(context, layer.dense_weight, layer.dense_bias)
        x = ops.deepnorm_residual(normed, attn, alpha)

        normed = ops.layernorm(x, layer.post_attention_layernorm_weight, layer.post_attention_layernorm_bias, eps)
        hidden = ops.geglu(ops.linear(normed, layer.dense_h_to_4h_weight, layer.dense_h_to_4h_bias))
        mlp = self._row_parallel_linear(hidden, layer.dense_4h_to_h_weight, layer.dense_4h_to_h_bias)
        return ops.deepnorm_residual(normed, mlp, alpha)

    def _row_parallel_linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The reference's RowParallelLinear: the local product, the all-reduce, then the bias as its own addition,
        which also rounds separately in fp16 (glm130b.md section 1.3)."""
        return self.comm.all_reduce(self.ops.linear(x, weight, None)) + bias
