"""The ChatGLM-6B (v1) forward pass, written against the same op interface as GLM-130B's.

Source: the public reference code of ``THUDM/chatglm-6b`` (Hugging Face), final revision ``8b7d335`` (2023-09-04;
the model code last changed in ``a8ede82``, 2023-04-27, the tokenizer in ``4d0fc39``, 2023-05-08):
``modeling_chatglm.py``, ``configuration_chatglm.py``, ``tokenization_chatglm.py``, ``quantization.py``, and
``quantization.py`` of ``THUDM/chatglm-6b-int4`` for the CPU kernels. Facts checked there, not assumed from GLM-130B:

* **Layer** (``GLMBlock``): ``ln = LN_in(x)``; ``x = ln * alpha + Attn(ln)``; ``ln2 = LN_post(x)``;
  ``out = ln2 * alpha + MLP(ln2)``, i.e. GLM-130B's DeepNorm residual on the LayerNorm *output*. But ``alpha`` is
  ``sqrt(2 * 28)`` for any depth: ``ChatGLMModel`` never passes ``num_layers`` to ``GLMBlock``, whose default is 28.
  ``torch.nn.LayerNorm`` with ``layernorm_epsilon`` (1e-5); every linear has a bias except ``lm_head``.
* **Attention**: ``query_key_value`` ``[3h, h]`` with rows head-major, ``[q | k | v]`` per head (as GLM-130B).
  Scores ``q / (sqrt(d) * (layer_id + 1))`` times ``k``, blocked ones filled with -10000, then in fp32 times
  ``layer_id + 1`` and softmax, cast back, times ``v``: the same query-key layer scaling as SAT.
* **2-D rotary** (``position_encoding_2d=True``): ``q`` and ``k`` of each head are split into halves of ``d/2`` (64
  for the real model); the first half is rotated by the position ids, the second by the block position ids, each
  with a ``d/2``-dim rotate-half table (pairs ``i, i + d/4``), base 10000. ``inv_freq`` is rounded to fp16 when built
  and the table is computed in the model's dtype (:func:`~glm_engine.model.rotary.chatglm_rotary_table`).
* **MLP** (class ``GLU``, but not gated): ``dense_h_to_4h`` ``[inner, h]`` (16384), ``gelu_impl`` = the tanh
  approximation ``0.5 x (1 + tanh(0.7978845608028654 x (1 + 0.044715 x^2)))`` (not erf GeLU), ``dense_4h_to_h``.
* **Output**: final LayerNorm, then a separate ``lm_head`` ``[vocab, h]`` without bias (not tied to the embedding).
* **Positions** (``get_position_ids``, 2-D): the mask is ``[gMASK]`` if the ids contain one, else ``[MASK]``;
  ``context_length`` is the index of ``<sop>`` (``bos_token_id``). Position ids are ``0 .. context_length-1`` and
  then the mask's index for ``<sop>`` and every generated token (for ``[gMASK]`` too: unlike GLM-130B's 1-D rule
  they do not continue); block position ids are 0 over the context, then 1 for ``<sop>``, 2, 3, ... for each
  generated token (``_update_model_kwargs_for_generation`` adds 1 per step).
* **Mask** (``get_masks``): causal, except that every position sees the whole context before ``<sop>``; generated
  tokens see everything before them. Bool, True = blocked (GLM-130B's prefix-bidirectional mask).

The special ids, tokenizer, chat prompt and generation defaults are in :mod:`glm_engine.tokenizer.chatglm` and
:mod:`glm_engine.generation.chat`.
"""

from __future__ import annotations

import torch

from glm_engine.backends.base import RunnerCapabilities
from glm_engine.model.chatglm_config import ROTARY_BASE, ChatGLMConfig
from glm_engine.model.chatglm_weights import ChatGLMWeights
from glm_engine.model.kv_cache import KVCache
from glm_engine.model.rotary import chatglm_rotary_table
from glm_engine.model.weights import LayerWeights
from glm_engine.ops.interface import DecodeStepper, OpTable


class ChatGLMModel:
    """A loaded ChatGLM model bound to one backend's op table; implements the ``ModelRunner`` interface with
    2-D position ids ``[b, 2, s]`` (row 0 position ids, row 1 block position ids, the reference's layout)."""

    def __init__(self, config: ChatGLMConfig, weights: ChatGLMWeights, ops: OpTable) -> None:
        self.config = config
        self.weights = weights
        self.ops = ops
        self.device = ops.device
        self.dtype = ops.dtype
        self.cos, self.sin = chatglm_rotary_table(
            config.rotary_dim, config.max_sequence_length, ops.dtype, ops.device, ROTARY_BASE
        )
        self.cuda_graphs: bool | None = None  # decode steps as CUDA graphs: None = the default (generation.cuda_graph)
        self.capabilities = RunnerCapabilities(kv_cache=True, tensor_parallel=1, op_level=True)

    def decode_stepper(self, steps: int | None = None, requested: bool | None = None) -> DecodeStepper:
        return self.ops.decode_stepper(self, steps, requested)

    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        c = self.config
        return KVCache(c.num_layers, batch_size, c.num_attention_heads, max_length, c.head_dim, self.dtype, self.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        blocked: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits ``[b, s, vocab]`` (``[b, 1, vocab]`` with ``last_only``) for ``input_ids [b, s]``.

        ``position_ids [b, 2, s]``; ``blocked`` bool ``[b or 1, 1, s, cached + s]``, True = may not attend. With a
        cache, the new keys/values (after rotary) are appended after the cached ones.
        """
        if position_ids.dim() != 3 or position_ids.shape[1] != 2:
            raise ValueError(f"ChatGLM position ids are [batch, 2, seq], got {tuple(position_ids.shape)}")
        ops, w = self.ops, self.weights
        x = ops.embedding(input_ids, w.word_embeddings)
        rotations = []
        for row in (position_ids[:, 0], position_ids[:, 1]):  # position ids, then block position ids
            rotations.append((ops.embedding(row, self.cos).unsqueeze(2), ops.embedding(row, self.sin).unsqueeze(2)))
        for index, layer in enumerate(w.layers):
            x = self._layer(index, layer, x, rotations, blocked, cache)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        if last_only:
            x = x[:, -1:]
        x = ops.layernorm(x, w.final_layernorm_weight, w.final_layernorm_bias, self.config.layernorm_epsilon)
        return ops.linear(x, w.lm_head, None)

    def _layer(
        self,
        index: int,
        layer: LayerWeights,
        x: torch.Tensor,
        rotations: list[tuple[torch.Tensor, torch.Tensor]],
        blocked: torch.Tensor,
        cache: KVCache | None,
    ) -> torch.Tensor:
        ops, c = self.ops, self.config
        b, s, h = x.shape
        alpha, eps, d = c.deepnorm_alpha, c.layernorm_epsilon, c.head_dim

        normed = ops.layernorm(x, layer.input_layernorm_weight, layer.input_layernorm_bias, eps)
        qkv = ops.linear(normed, layer.query_key_value_weight, layer.query_key_value_bias)
        q, k, v = qkv.view(b, s, c.num_attention_heads, 3 * d).split(d, dim=-1)
        halves = [ops.rotary(qh, kh, cos, sin) for qh, kh, (cos, sin) in zip(q.chunk(2, -1), k.chunk(2, -1), rotations)]
        q = torch.cat([halves[0][0], halves[1][0]], dim=-1)
        k = torch.cat([halves[0][1], halves[1][1]], dim=-1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, heads, s, d]
        if cache is not None:
            k, v = cache.update(index, k, v)
        context = ops.attention(q, k, v, blocked, layer_scale=float(index + 1))
        context = context.transpose(1, 2).reshape(b, s, h)
        attn = ops.linear(context, layer.dense_weight, layer.dense_bias)  # nn.Linear: the bias is fused (not SAT's)
        x = ops.deepnorm_residual(normed, attn, alpha)

        normed = ops.layernorm(x, layer.post_attention_layernorm_weight, layer.post_attention_layernorm_bias, eps)
        hidden = ops.gelu(ops.linear(normed, layer.dense_h_to_4h_weight, layer.dense_h_to_4h_bias))
        mlp = ops.linear(hidden, layer.dense_4h_to_h_weight, layer.dense_4h_to_h_bias)
        return ops.deepnorm_residual(normed, mlp, alpha)
