"""The decoder of any family as one ONNX graph with a KV cache, node for node the math of ``model/block.py`` over
``TorchOps``: each part is emitted as the family's description chooses it (``Family.parts``), as the graph computes it.

One graph serves prefill and decode. Inputs: ``input_ids [batch, seq]``, ``position_ids [batch, seq]`` (or
``[batch, 2, seq]`` for 2-D rotary),
``attention_mask`` bool ``[batch, 1, seq, past + seq]`` (True = blocked: GLM's prefix-bidirectional mask or the causal
mask, built by the caller exactly as the engine builds ``blocked``), ``logits_to_keep`` int64 ``[num_logits]`` (the
sequence positions whose logits are computed, in order: the last one for generation, every one for scoring;
transformers' tensor form of ``logits_to_keep``) and ``past_key_values.{i}.key/value [batch, kv_heads, past,
head_dim]`` (keys after rotary, as the engine caches them; ``kv_heads`` is the number of key/value heads: the query
heads, or the groups of grouped-query attention; ``past`` may be 0). Outputs: ``logits [batch, num_logits, vocab]``
and ``present.{i}.key/value [batch, kv_heads, past + seq, head_dim]`` (the names onnxruntime-genai uses,
``docs/export.md``).

Why ``logits_to_keep`` is an index tensor and not a count: the output's shape then follows an input's *shape*, so
TensorRT sees an ordinary dynamic input (a count would make it a shape tensor bound in host memory), and the positions
are gathered before the final norm, so a prefill that needs only the last row pays for one row of the output
projection instead of all of them (vocab x hidden per row: the largest matrix of a small model).

The op sequence mirrors the reference semantics the engine's portable ops implement (``docs/glm-semantics.md``,
``docs/families.md``): LayerNorm, or RMSNorm computed in fp32 with the gain applied before or after the one rounding
(``BlockParts.norm_weight_in_fp32``); rotate-half rotary from the family's cos/sin tables (``Family.rotary_tables``,
stored as initializers; 2-D rotary rotates each half of a head by its own position row; partial interleaved rotary
turns the GPT-J pairs of the first ``rotary_dims`` dims into halves around the same rotation and passes the rest
through); query divided by ``sqrt(d) * (layer + 1)`` (or ``sqrt(d)`` without layer scaling), blocked scores set to
-10000, scores times ``layer + 1`` and softmax in fp32, cast back; grouped key/value heads read in place by the query
heads of their group (no copy of the cache); biases, where the family has them, added after the product (a fused
``nn.Linear`` bias and SAT's separate addition are the same two nodes here); the DeepNorm residual
``normed * alpha + branch`` or the pre-norm ``x + branch`` (after an RMSNorm of the branch where the family has one);
GeGLU with erf GeLU, ChatGLM's tanh GeLU or SwiGLU; a tied embedding as output projection (``Gemm`` with ``transB``,
so the table is stored once for lookup and logits) or a separate matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from glm_engine.export.onnx_builder import GraphBuilder, onnx_type
from glm_engine.export.quant_onnx import emit_dequantize_matmul, emit_matmul_nbits
from glm_engine.exported.names import (
    BATCH,
    LOGITS_TO_KEEP,
    NUM_LOGITS,
    PAST,
    PAST_NAMES,
    PRESENT_NAMES,
    SEQ,
    TOTAL,
    QuantTarget,
)
from glm_engine.model.parts import Activation, Norm, QKVLayout, Residual, Rotary
from glm_engine.model.registry import family_of
from glm_engine.model.weights import LayerWeights
from glm_engine.ops.interface import ModelConfig
from glm_engine.ops.torch_ops import GELU_TANH_CUBIC, GELU_TANH_SCALE, MASKED_SCORE
from glm_engine.quant.weight import QuantizedWeight

FP32 = torch.float32


@dataclass(frozen=True)
class QuantEmit:
    """How quantized linears are written: the target's op, and MatMulNBits' accuracy level (0 = exact)."""

    target: QuantTarget = QuantTarget.ort
    accuracy_level: int = 0


class DecoderGraph:
    """Writes a family's decoder into a GraphBuilder, one layer at a time (so a caller can stream the weights)."""

    def __init__(
        self, g: GraphBuilder, config: ModelConfig, dtype: torch.dtype, max_seq: int, quant: QuantEmit
    ) -> None:
        self.g, self.config, self.dtype, self.quant = g, config, dtype, quant
        self.family = family_of(config)
        self.parts = self.family.parts(config)
        c = config
        self.heads, self.d = c.num_attention_heads, c.head_dim
        self.kv_heads = self.parts.kv_heads or self.heads  # the export is one rank: every key/value head
        g.add_input("input_ids", torch.int64, [BATCH, SEQ])
        g.add_input("position_ids", torch.int64, self.position_shape())
        g.add_input("attention_mask", torch.bool, [BATCH, 1, SEQ, TOTAL])
        self.mask = "attention_mask"
        g.add_input(LOGITS_TO_KEEP, torch.int64, [NUM_LOGITS])
        cos, sin = self.rotary_tables(max_seq)
        self.cos_table = g.weight("rotary.cos", cos)
        self.sin_table = g.weight("rotary.sin", sin)
        self._scalars: dict[tuple[float, torch.dtype], str] = {}

    # --- the parts the family's description chooses ---------------------------------------------------------------
    def position_shape(self) -> list[int | str]:
        return [BATCH, SEQ] if self.parts.position_rows == 1 else [BATCH, self.parts.position_rows, SEQ]

    def rotary_tables(self, max_seq: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.family.rotary_tables(self.config, self.dtype, "cpu", max_seq)

    def rotations(self, position_ids: str) -> list[tuple[str, str]]:
        """Per-token ``(cos, sin)`` ``[b, s, 1, n]`` for each rotated part of the head, from its position row."""
        g = self.g
        axes = g.const([2], torch.int64, "axis2")
        if self.parts.position_rows == 1:
            rows = [position_ids]
        else:  # position ids, then block position ids
            rows = [g.node("Gather", [position_ids, g.const(r, torch.int64, "row")], axis=1) for r in (0, 1)]
        out = []
        for ids in rows:
            cos = g.node("Unsqueeze", [g.node("Gather", [self.cos_table, ids], axis=0), axes])
            sin = g.node("Unsqueeze", [g.node("Gather", [self.sin_table, ids], axis=0), axes])
            out.append((cos, sin))
        return out

    def rotary(self, q: str, k: str, rotations: list[tuple[str, str]]) -> tuple[str, str]:
        """Rotary embedding of ``q, k [b, s, heads or groups, d]`` by the family's layout (``block.rotate``)."""
        rotary = self.parts.rotary
        if rotary is Rotary.WHOLE_HEAD:
            ((cos, sin),) = rotations
            return self.rotate(q, cos, sin), self.rotate(k, cos, sin)
        if rotary is Rotary.PARTIAL_INTERLEAVED:
            ((cos, sin),) = rotations
            return self.rotate_partial(q, cos, sin), self.rotate_partial(k, cos, sin)
        if rotary is not Rotary.TWO_HALVES:
            raise NotImplementedError(rotary)
        g = self.g
        q_halves = g.node("Split", [q], outputs=2, axis=-1, num_outputs=2)
        k_halves = g.node("Split", [k], outputs=2, axis=-1, num_outputs=2)
        q_out = [self.rotate(half, cos, sin) for half, (cos, sin) in zip(q_halves, rotations)]
        k_out = [self.rotate(half, cos, sin) for half, (cos, sin) in zip(k_halves, rotations)]
        return g.node("Concat", q_out, axis=-1), g.node("Concat", k_out, axis=-1)

    def activation(self, x: str) -> str:
        """GeGLU (``x1 * gelu_erf(x2)`` over the halves of the last dim), SwiGLU (``silu(gate) * up``) or the tanh
        GeLU, as TorchOps orders them."""
        g = self.g
        activation = self.parts.activation
        if activation is Activation.GEGLU:
            x1, x2 = g.node("Split", [x], outputs=2, axis=-1, num_outputs=2)
            return g.node("Mul", [x1, self.gelu_erf(x2)])
        if activation is Activation.SWIGLU:
            gate, up = g.node("Split", [x], outputs=2, axis=-1, num_outputs=2)
            return g.node("Mul", [self.silu(gate), up])
        if activation is not Activation.GELU_TANH:
            raise NotImplementedError(activation)
        one = self.scalar(1.0)
        cubic = g.node("Add", [one, g.node("Mul", [g.node("Mul", [self.scalar(GELU_TANH_CUBIC), x]), x])])
        inner = g.node("Mul", [g.node("Mul", [self.scalar(GELU_TANH_SCALE), x]), cubic])
        return g.node("Mul", [g.node("Mul", [self.scalar(0.5), x]), g.node("Add", [one, g.node("Tanh", [inner])])])

    def norm(self, x: str, name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> str:
        """The family's normalisation over the hidden dimension (``block.norm``)."""
        if self.parts.norm is Norm.LAYERNORM:
            return self.layernorm(x, name, weight, bias)
        if self.parts.norm is Norm.RMSNORM:
            return self.rmsnorm(x, name, weight)
        raise NotImplementedError(self.parts.norm)

    def residual(self, x: str, normed: str, branch: str, name: str, branch_norm: torch.Tensor | None) -> str:
        """A branch rejoins the stream (``block.residual``): DeepNorm ``normed * alpha + branch`` (two roundings in
        low precision, as the engine's op), or pre-norm ``x + branch``, the branch normed first where the family has
        a norm there (GLM-4-0414)."""
        g, parts = self.g, self.parts
        if parts.residual is Residual.DEEPNORM:
            return g.node("Add", [g.node("Mul", [normed, self.scalar(parts.deepnorm_alpha)]), branch])
        if parts.residual is not Residual.PRENORM:
            raise NotImplementedError(parts.residual)
        if parts.post_branch_norm:
            branch = self.norm(branch, name, branch_norm, None)
        return g.node("Add", [x, branch])

    # --- building blocks --------------------------------------------------------------------------------------
    def scalar(self, value: float, dtype: torch.dtype | None = None) -> str:
        """A scalar constant in ``dtype`` (default: the graph's), made once on first use, so a graph holds only the
        constants its parts need."""
        dtype = dtype or self.dtype
        key = (value, dtype)
        if key not in self._scalars:
            self._scalars[key] = self.g.const(value, dtype, "scalar")
        return self._scalars[key]

    def gelu_erf(self, x: str) -> str:
        g = self.g
        erf = g.node("Erf", [g.node("Mul", [x, self.scalar(1 / math.sqrt(2))])])
        return g.node("Mul", [g.node("Mul", [x, self.scalar(0.5)]), g.node("Add", [erf, self.scalar(1.0)])])

    def silu(self, x: str) -> str:
        """torch's ``silu``: ``x / (1 + exp(-x))`` computed in fp32 and rounded once to the graph dtype. Not
        ``x * Sigmoid(x)``: ONNX Runtime's CPU Sigmoid is a fast approximation (measured on 10^6 normal values times
        4: mean relative error 6e-5, up to 2.2 for large negative inputs, against 3e-8 for this form, which is as
        close to float64 as torch's fp32 ``silu``)."""
        g = self.g
        wide = self.cast(x, FP32)
        denominator = g.node("Add", [self.scalar(1.0, FP32), g.node("Exp", [g.node("Neg", [wide])])])
        return self.cast(g.node("Div", [wide, denominator]), self.dtype)

    def cast(self, x: str, to: torch.dtype) -> str:
        """``x`` (in the graph dtype, or fp32 after a widening cast) converted to ``to``; no node when the graph
        computes in ``to`` already."""
        return x if self.dtype == FP32 else self.g.node("Cast", [x], to=onnx_type(to))

    def matmul(self, x: str, name: str, weight: torch.Tensor | QuantizedWeight) -> str:
        """``x @ W.T`` for ``W [out, in]``: stored transposed for MatMul, or in the quantized target's form."""
        g = self.g
        if isinstance(weight, QuantizedWeight):
            if self.quant.target is QuantTarget.ort:
                return emit_matmul_nbits(g, x, name, weight, self.dtype, self.quant.accuracy_level)
            return emit_dequantize_matmul(g, x, name, weight, self.dtype)
        return g.node("MatMul", [x, g.weight(f"{name}.weight", weight.to(self.dtype).t().contiguous())])

    def linear(self, x: str, name: str, weight: torch.Tensor | QuantizedWeight, bias: torch.Tensor | None) -> str:
        """The product, then the bias where the layer has one."""
        product = self.matmul(x, name, weight)
        if bias is None:
            return product
        return self.g.node("Add", [product, self.g.weight(f"{name}.bias", bias.to(self.dtype))])

    def layernorm(self, x: str, name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> str:
        """``LayerNormalization`` over the hidden dimension; in fp32 between two casts for the TensorRT target of a
        low-precision graph (:meth:`layernorm_dtype`). The gain and bias keep the model dtype's values either way."""
        g = self.g
        compute = self.layernorm_dtype()
        w = g.weight(f"{name}.weight", weight.to(self.dtype).to(compute))
        inputs = [x, w] if bias is None else [x, w, g.weight(f"{name}.bias", bias.to(self.dtype).to(compute))]
        if compute == self.dtype:
            return g.node("LayerNormalization", inputs, axis=-1, epsilon=self.config.layernorm_epsilon)
        inputs[0] = g.node("Cast", [x], to=onnx_type(compute))
        normed = g.node("LayerNormalization", inputs, axis=-1, epsilon=self.config.layernorm_epsilon)
        return g.node("Cast", [normed], to=onnx_type(self.dtype))

    def layernorm_dtype(self) -> torch.dtype:
        """The dtype ``LayerNormalization`` computes in: fp32 for the TensorRT target, else the graph's.

        ONNX's ``stash_type`` (default fp32) asks for fp32 statistics, but TensorRT builds the graph strongly typed
        (``build.py``), where a layer's types follow its inputs (TensorRT "Strongly Typed Networks"; TensorRT 11's
        normalization layer has no compute precision of its own), so an fp16 input may be normalized in fp16. With
        DeepNorm's residual (``normed * alpha + branch``, alpha = (2 * 70) ** 0.5 ~ 11.8 for GLM-130B) the hidden
        values reach magnitudes whose squares summed over 12288 columns exceed fp16's 65504. Casting in and out keeps
        the statistics in fp32 and rounds once, as the engine's ``F.layer_norm`` (fp32 math on an fp16 tensor)
        does. The ``ort`` target keeps the plain node (ONNX Runtime follows ``stash_type``)."""
        return FP32 if self.quant.target is QuantTarget.tensorrt else self.dtype

    def rmsnorm(self, x: str, name: str, weight: torch.Tensor) -> str:
        """``TorchOps.rmsnorm``: ``h = x * rsqrt(mean(x^2) + eps)`` in fp32; the gain (the model-dtype weight) then
        multiplies in fp32 with one rounding after it (remote code), or multiplies ``h`` rounded to the graph dtype
        (transformers' native modules)."""
        g = self.g
        h = self.cast(x, FP32)
        mean = g.node("ReduceMean", [g.node("Mul", [h, h]), g.const([-1], torch.int64, "axis_last")], keepdims=1)
        eps = self.scalar(self.config.layernorm_epsilon, FP32)
        h = g.node("Mul", [h, g.node("Reciprocal", [g.node("Sqrt", [g.node("Add", [mean, eps])])])])
        gain = weight.to(self.dtype)
        if self.parts.norm_weight_in_fp32:
            return self.cast(g.node("Mul", [g.weight(f"{name}.weight", gain.to(FP32)), h]), self.dtype)
        return g.node("Mul", [g.weight(f"{name}.weight", gain), self.cast(h, self.dtype)])

    def rotate(self, x: str, cos: str, sin: str) -> str:
        """``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x[d/2:], x[:d/2])``."""
        g = self.g
        first, second = g.node("Split", [x], outputs=2, axis=-1, num_outputs=2)
        rotated = g.node("Concat", [g.node("Neg", [second]), first], axis=-1)
        return g.node("Add", [g.node("Mul", [x, cos]), g.node("Mul", [rotated, sin])])

    def rotate_partial(self, x: str, cos: str, sin: str) -> str:
        """The first ``rotary_dims`` dims of ``x [b, s, n_heads, d]`` rotated in GPT-J pairs ``(2i, 2i + 1)``: the
        pairs become halves (``block.pairs_to_halves``), the rotate-half rotation runs on them, and they go back;
        the remaining dims pass through."""
        g, n, d = self.g, self.parts.rotary_dims, self.d
        if n is None:
            raise ValueError("partial interleaved rotary needs BlockParts.rotary_dims")
        rest = None
        if n < d:
            x, rest = g.node("Split", [x, g.const([n, d - n], torch.int64, "rotary_split")], outputs=2, axis=-1)
        halves = self.regroup(x, [0, 0, 0, n // 2, 2], [0, 0, 0, n])
        pairs = self.regroup(self.rotate(halves, cos, sin), [0, 0, 0, 2, n // 2], [0, 0, 0, n])
        return pairs if rest is None else g.node("Concat", [pairs, rest], axis=-1)

    def regroup(self, x: str, split_shape: list[int], shape: list[int]) -> str:
        """The last dim of ``x`` viewed as ``split_shape``'s two last dims, those two swapped, flattened back."""
        g = self.g
        x = g.node("Reshape", [x, g.const(split_shape, torch.int64, "pair_shape")])
        x = g.node("Transpose", [x], perm=[0, 1, 2, 4, 3])
        return g.node("Reshape", [x, g.const(shape, torch.int64, "head_shape")])

    # --- the model ----------------------------------------------------------------------------------------------
    def embed(self, word_embeddings: torch.Tensor) -> str:
        """Token lookup; returns the hidden states and keeps the table for the tied output projection."""
        self.embedding = self.g.weight("transformer.word_embeddings.weight", word_embeddings.to(self.dtype))
        self.rot = self.rotations("position_ids")
        return self.g.node("Gather", [self.embedding, "input_ids"], axis=0)

    def layer(self, index: int, w: LayerWeights, x: str) -> str:
        p = f"transformer.layers.{index}"
        normed = self.norm(x, f"{p}.input_layernorm", w.input_layernorm_weight, w.input_layernorm_bias)
        attn = self.attention_branch(index, w, normed)
        x = self.residual(x, normed, attn, f"{p}.post_self_attn_layernorm", w.post_self_attn_layernorm_weight)
        normed = self.norm(
            x, f"{p}.post_attention_layernorm", w.post_attention_layernorm_weight, w.post_attention_layernorm_bias
        )
        hidden = self.linear(normed, f"{p}.mlp.dense_h_to_4h", w.dense_h_to_4h_weight, w.dense_h_to_4h_bias)
        mlp = self.linear(
            self.activation(hidden), f"{p}.mlp.dense_4h_to_h", w.dense_4h_to_h_weight, w.dense_4h_to_h_bias
        )
        return self.residual(x, normed, mlp, f"{p}.post_mlp_layernorm", w.post_mlp_layernorm_weight)

    def attention_branch(self, index: int, w: LayerWeights, normed: str) -> str:
        """Fused QKV, rotary, this layer's KV cache in and out, attention and the output projection."""
        g, dt, heads, groups, d = self.g, self.dtype, self.heads, self.kv_heads, self.d
        p = f"transformer.layers.{index}"
        past_k = g.add_input(PAST_NAMES["key"] % index, dt, [BATCH, groups, PAST, d])
        past_v = g.add_input(PAST_NAMES["value"] % index, dt, [BATCH, groups, PAST, d])
        qkv = self.linear(normed, f"{p}.attention.query_key_value", w.query_key_value_weight, w.query_key_value_bias)
        q, k, v = self.split_qkv(qkv)
        q, k = self.rotary(q, k, self.rot)
        q, k, v = (g.node("Transpose", [t], perm=[0, 2, 1, 3]) for t in (q, k, v))  # [b, heads or groups, s, d]
        k = g.node("Concat", [past_k, k], axis=2)
        v = g.node("Concat", [past_v, v], axis=2)
        g.add_output(PRESENT_NAMES["key"] % index, dt, [BATCH, groups, TOTAL, d], k)
        g.add_output(PRESENT_NAMES["value"] % index, dt, [BATCH, groups, TOTAL, d], v)

        layer_scale = float(index + 1) if self.parts.layer_scaled_attention else 1.0
        context = self.attention(q, k, v, layer_scale)
        context = g.node("Transpose", [context], perm=[0, 2, 1, 3])
        context = g.node("Reshape", [context, g.const([0, 0, heads * d], torch.int64, "context_shape")])
        return self.linear(context, f"{p}.attention.dense", w.dense_weight, w.dense_bias)

    def split_qkv(self, qkv: str) -> tuple[str, str, str]:
        """``q [b, s, heads, d]`` and ``k, v [b, s, kv_heads, d]`` from the fused product's rows: ``[q | k | v]`` per
        head, or all query heads then the key groups then the value groups (``QKVLayout``)."""
        g, heads, groups, d = self.g, self.heads, self.kv_heads, self.d
        if self.parts.qkv is QKVLayout.PER_HEAD:
            qkv = g.node("Reshape", [qkv, g.const([0, 0, heads, 3 * d], torch.int64, "qkv_shape")])
            return tuple(g.node("Split", [qkv], outputs=3, axis=-1, num_outputs=3))
        if self.parts.qkv is not QKVLayout.GROUPED:
            raise NotImplementedError(self.parts.qkv)
        sizes = g.const([heads * d, groups * d, groups * d], torch.int64, "qkv_split")
        q, k, v = g.node("Split", [qkv, sizes], outputs=3, axis=-1)
        q = g.node("Reshape", [q, g.const([0, 0, heads, d], torch.int64, "q_shape")])
        kv_shape = g.const([0, 0, groups, d], torch.int64, "kv_shape")
        return q, g.node("Reshape", [k, kv_shape]), g.node("Reshape", [v, kv_shape])

    def attention(self, q: str, k: str, v: str, layer_scale: float) -> str:
        """``reference_attention``: layer-scaled query, masked fill, fp32 softmax, cast back, times ``v``.

        With grouped key/value heads the query heads of a group are stacked along the rows of that group's product
        (``[b, groups, heads_per_group * s, d]``), so each query head meets its group's keys and values exactly as
        when the group is repeated (``expand_groups``) while the cache is read in place; the scores are viewed per
        head for the mask and the softmax."""
        g, dt, heads, groups, d = self.g, self.dtype, self.heads, self.kv_heads, self.d
        grouped = groups != heads
        q = g.node("Div", [q, self.scalar(math.sqrt(d) * layer_scale)])
        if grouped:
            q = g.node("Reshape", [q, g.const([0, groups, -1, d], torch.int64, "group_rows")])
        scores = g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 1, 3, 2])])
        if grouped:  # [b, groups, per_group * s, total] -> [b, heads, s, total]
            scores = g.node("Reshape", [scores, g.const([0, heads, -1, 0], torch.int64, "head_scores")])
        scores = g.node("Where", [self.mask, self.scalar(MASKED_SCORE), scores])
        scores = self.cast(scores, FP32)
        if layer_scale != 1.0:  # a product with 1.0 is exact: no node for families without layer scaling
            scores = g.node("Mul", [scores, self.scalar(layer_scale, FP32)])
        probs = self.cast(g.node("Softmax", [scores], axis=-1), dt)
        if grouped:
            probs = g.node("Reshape", [probs, g.const([0, groups, -1, 0], torch.int64, "group_probs")])
        context = g.node("MatMul", [probs, v])
        if grouped:
            context = g.node("Reshape", [context, g.const([0, heads, -1, d], torch.int64, "head_context")])
        return context

    def head(
        self,
        x: str,
        final_weight: torch.Tensor,
        final_bias: torch.Tensor | None,
        output: Callable[[str], str] | None = None,
    ) -> None:
        """The positions of ``logits_to_keep``, the final norm and logits; ``output`` overrides the tied
        projection (an untied head)."""
        g = self.g
        x = g.node("Gather", [x, LOGITS_TO_KEEP], axis=1)  # [b, num_logits, hidden]: per-position work after it
        x = self.norm(x, "transformer.final_layernorm", final_weight, final_bias)
        logits = output(x) if output is not None else self.tied_logits(x)
        g.add_output("logits", self.dtype, [BATCH, NUM_LOGITS, self.config.vocab_size], logits, first=True)

    def tied_logits(self, x: str) -> str:
        """``x @ E.T`` with the embedding table itself (Gemm transB on rows, then back to ``[b, s, vocab]``)."""
        g = self.g
        rows = g.node("Reshape", [x, g.const([-1, self.config.hidden_size], torch.int64, "rows_shape")])
        flat = g.node("Gemm", [rows, self.embedding], transB=1)
        leading = g.node("Shape", [x], start=0, end=2)
        shape = g.node("Concat", [leading, g.const([self.config.vocab_size], torch.int64, "vocab")], axis=0)
        return g.node("Reshape", [flat, shape])
