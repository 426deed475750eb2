"""The decoder of any family as one ONNX graph with a KV cache, node for node the math of ``model/block.py`` over
``TorchOps``: each part is emitted as the family's description chooses it (``Family.parts``), as the graph computes it.

One graph serves prefill and decode. Inputs: ``input_ids [batch, seq]``, ``position_ids [batch, seq]`` (or
``[batch, 2, seq]`` for 2-D rotary),
``attention_mask`` bool ``[batch, 1, seq, past + seq]`` (True = blocked: GLM's prefix-bidirectional mask, built by the
caller exactly as the engine builds ``blocked``), ``logits_to_keep`` int64 ``[num_logits]`` (the sequence positions
whose logits are computed, in order: the last one for generation, every one for scoring; transformers' tensor form of
``logits_to_keep``) and ``past_key_values.{i}.key/value [batch, heads, past, head_dim]`` (keys after rotary, as the
engine caches them; ``past`` may be 0). Outputs: ``logits [batch, num_logits, vocab]`` and
``present.{i}.key/value [batch, heads, past + seq, head_dim]`` (the names onnxruntime-genai uses,
``docs/export.md``).

Why ``logits_to_keep`` is an index tensor and not a count: the output's shape then follows an input's *shape*, so
TensorRT sees an ordinary dynamic input (a count would make it a shape tensor bound in host memory), and the positions
are gathered before the final LayerNorm, so a prefill that needs only the last row pays for one row of the output
projection instead of all of them (vocab x hidden per row: the largest matrix of a small model).

The op sequence mirrors the reference semantics the engine's portable ops implement (``docs/glm-semantics.md``):
rotate-half rotary from the family's cos/sin tables (``Family.rotary_tables``, stored as initializers; 2-D rotary
rotates each half of a head by its own position row); query divided by ``sqrt(d) * (layer + 1)``, blocked scores set
to -10000, scores times ``layer + 1`` and softmax in fp32, cast back; biases added after the product (a fused
``nn.Linear`` bias and SAT's separate addition are the same two nodes here); DeepNorm residual
``normed * alpha + branch``; GeGLU with erf GeLU or ChatGLM's tanh GeLU; a tied embedding as output projection
(``Gemm`` with ``transB``, so the table is stored once for lookup and logits) or a separate matrix.
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
from glm_engine.model.parts import Activation, Rotary
from glm_engine.model.registry import family_of
from glm_engine.model.weights import LayerWeights
from glm_engine.ops.interface import ModelConfig
from glm_engine.ops.torch_ops import GELU_TANH_CUBIC, GELU_TANH_SCALE, MASKED_SCORE
from glm_engine.quant.weight import QuantizedWeight


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
        g.add_input("input_ids", torch.int64, [BATCH, SEQ])
        g.add_input("position_ids", torch.int64, self.position_shape())
        g.add_input("attention_mask", torch.bool, [BATCH, 1, SEQ, TOTAL])
        self.mask = "attention_mask"
        g.add_input(LOGITS_TO_KEEP, torch.int64, [NUM_LOGITS])
        cos, sin = self.rotary_tables(max_seq)
        self.cos_table = g.weight("rotary.cos", cos)
        self.sin_table = g.weight("rotary.sin", sin)
        self.alpha = g.const(self.parts.deepnorm_alpha, dtype, "deepnorm_alpha")
        self.masked = g.const(MASKED_SCORE, dtype, "masked_score")
        self.half = g.const(0.5, dtype, "half")
        self.one = g.const(1.0, dtype, "one")
        self.inv_sqrt2: str | None = None  # made on first use: ChatGLM's tanh GeLU never needs it

    # --- the parts the family's description chooses ---------------------------------------------------------------
    def position_shape(self) -> list[int | str]:
        return [BATCH, SEQ] if self.parts.position_rows == 1 else [BATCH, self.parts.position_rows, SEQ]

    def rotary_tables(self, max_seq: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.family.rotary_tables(self.config, self.dtype, "cpu", max_seq)

    def rotations(self, position_ids: str) -> list[tuple[str, str]]:
        """Per-token ``(cos, sin)`` ``[b, s, 1, n]`` for each rotated part of the head, from its position row."""
        g = self.g
        axes = g.const([2], torch.int64, "axis2")
        if self.parts.rotary is Rotary.WHOLE_HEAD:
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
        if self.parts.rotary is Rotary.WHOLE_HEAD:
            ((cos, sin),) = rotations
            return self.rotate(q, cos, sin), self.rotate(k, cos, sin)
        g = self.g
        q_halves = g.node("Split", [q], outputs=2, axis=-1, num_outputs=2)
        k_halves = g.node("Split", [k], outputs=2, axis=-1, num_outputs=2)
        q_out = [self.rotate(half, cos, sin) for half, (cos, sin) in zip(q_halves, rotations)]
        k_out = [self.rotate(half, cos, sin) for half, (cos, sin) in zip(k_halves, rotations)]
        return g.node("Concat", q_out, axis=-1), g.node("Concat", k_out, axis=-1)

    def activation(self, x: str) -> str:
        """GeGLU (``x1 * gelu_erf(x2)`` over the halves of the last dim) or the tanh GeLU, as TorchOps orders them."""
        g, dt = self.g, self.dtype
        if self.parts.activation is Activation.GEGLU:
            x1, x2 = g.node("Split", [x], outputs=2, axis=-1, num_outputs=2)
            return g.node("Mul", [x1, self.gelu_erf(x2)])
        cubic = g.node("Add", [self.one, g.node("Mul", [g.node("Mul", [g.const(GELU_TANH_CUBIC, dt), x]), x])])
        inner = g.node("Mul", [g.node("Mul", [g.const(GELU_TANH_SCALE, dt), x]), cubic])
        return g.node("Mul", [g.node("Mul", [self.half, x]), g.node("Add", [self.one, g.node("Tanh", [inner])])])

    # --- building blocks --------------------------------------------------------------------------------------
    def gelu_erf(self, x: str) -> str:
        g = self.g
        if self.inv_sqrt2 is None:
            self.inv_sqrt2 = g.const(1 / math.sqrt(2), self.dtype, "inv_sqrt2")
        erf = g.node("Erf", [g.node("Mul", [x, self.inv_sqrt2])])
        return g.node("Mul", [g.node("Mul", [x, self.half]), g.node("Add", [erf, self.one])])

    def matmul(self, x: str, name: str, weight: torch.Tensor | QuantizedWeight) -> str:
        """``x @ W.T`` for ``W [out, in]``: stored transposed for MatMul, or in the quantized target's form."""
        g = self.g
        if isinstance(weight, QuantizedWeight):
            if self.quant.target is QuantTarget.ort:
                return emit_matmul_nbits(g, x, name, weight, self.dtype, self.quant.accuracy_level)
            return emit_dequantize_matmul(g, x, name, weight, self.dtype)
        return g.node("MatMul", [x, g.weight(f"{name}.weight", weight.to(self.dtype).t().contiguous())])

    def linear(self, x: str, name: str, weight: torch.Tensor | QuantizedWeight, bias: torch.Tensor) -> str:
        return self.g.node("Add", [self.matmul(x, name, weight), self.g.weight(f"{name}.bias", bias.to(self.dtype))])

    def layernorm(self, x: str, name: str, weight: torch.Tensor, bias: torch.Tensor) -> str:
        g = self.g
        w = g.weight(f"{name}.weight", weight.to(self.dtype))
        b = g.weight(f"{name}.bias", bias.to(self.dtype))
        return g.node("LayerNormalization", [x, w, b], axis=-1, epsilon=self.config.layernorm_epsilon)

    def rotate(self, x: str, cos: str, sin: str) -> str:
        """``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x[d/2:], x[:d/2])``."""
        g = self.g
        first, second = g.node("Split", [x], outputs=2, axis=-1, num_outputs=2)
        rotated = g.node("Concat", [g.node("Neg", [second]), first], axis=-1)
        return g.node("Add", [g.node("Mul", [x, cos]), g.node("Mul", [rotated, sin])])

    # --- the model ----------------------------------------------------------------------------------------------
    def embed(self, word_embeddings: torch.Tensor) -> str:
        """Token lookup; returns the hidden states and keeps the table for the tied output projection."""
        self.embedding = self.g.weight("transformer.word_embeddings.weight", word_embeddings.to(self.dtype))
        self.rot = self.rotations("position_ids")
        return self.g.node("Gather", [self.embedding, "input_ids"], axis=0)

    def layer(self, index: int, w: LayerWeights, x: str) -> str:
        g, dt, heads, d = self.g, self.dtype, self.heads, self.d
        p = f"transformer.layers.{index}"
        past_k = g.add_input(PAST_NAMES["key"] % index, dt, [BATCH, heads, PAST, d])
        past_v = g.add_input(PAST_NAMES["value"] % index, dt, [BATCH, heads, PAST, d])

        normed = self.layernorm(x, f"{p}.input_layernorm", w.input_layernorm_weight, w.input_layernorm_bias)
        qkv = self.linear(normed, f"{p}.attention.query_key_value", w.query_key_value_weight, w.query_key_value_bias)
        qkv = g.node("Reshape", [qkv, g.const([0, 0, heads, 3 * d], torch.int64, "qkv_shape")])
        q, k, v = g.node("Split", [qkv], outputs=3, axis=-1, num_outputs=3)
        q, k = self.rotary(q, k, self.rot)
        q, k, v = (g.node("Transpose", [t], perm=[0, 2, 1, 3]) for t in (q, k, v))  # [b, heads, s, d]
        k = g.node("Concat", [past_k, k], axis=2)
        v = g.node("Concat", [past_v, v], axis=2)
        g.add_output(PRESENT_NAMES["key"] % index, dt, [BATCH, heads, TOTAL, d], k)
        g.add_output(PRESENT_NAMES["value"] % index, dt, [BATCH, heads, TOTAL, d], v)

        context = self.attention(q, k, v, float(index + 1))
        context = g.node("Transpose", [context], perm=[0, 2, 1, 3])
        context = g.node("Reshape", [context, g.const([0, 0, heads * d], torch.int64, "context_shape")])
        attn = self.linear(context, f"{p}.attention.dense", w.dense_weight, w.dense_bias)
        x = self.residual(normed, attn)

        normed = self.layernorm(
            x, f"{p}.post_attention_layernorm", w.post_attention_layernorm_weight, w.post_attention_layernorm_bias
        )
        hidden = self.linear(normed, f"{p}.mlp.dense_h_to_4h", w.dense_h_to_4h_weight, w.dense_h_to_4h_bias)
        mlp = self.linear(
            self.activation(hidden), f"{p}.mlp.dense_4h_to_h", w.dense_4h_to_h_weight, w.dense_4h_to_h_bias
        )
        return self.residual(normed, mlp)

    def residual(self, normed: str, branch: str) -> str:
        """DeepNorm: ``normed * alpha + branch`` (two roundings in low precision, as the engine's op)."""
        return self.g.node("Add", [self.g.node("Mul", [normed, self.alpha]), branch])

    def attention(self, q: str, k: str, v: str, layer_scale: float) -> str:
        """``reference_attention``: layer-scaled query, masked fill, fp32 softmax, cast back, times ``v``."""
        g, dt = self.g, self.dtype
        q = g.node("Div", [q, g.const(math.sqrt(self.d) * layer_scale, dt, "query_scale")])
        scores = g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 1, 3, 2])])
        scores = g.node("Where", [self.mask, self.masked, scores])
        if dt != torch.float32:
            scores = g.node("Cast", [scores], to=onnx_type(torch.float32))
        scores = g.node("Mul", [scores, g.const(layer_scale, torch.float32, "layer_scale")])
        probs = g.node("Softmax", [scores], axis=-1)
        if dt != torch.float32:
            probs = g.node("Cast", [probs], to=onnx_type(dt))
        return g.node("MatMul", [probs, v])

    def head(
        self, x: str, final_weight: torch.Tensor, final_bias: torch.Tensor, output: Callable[[str], str] | None = None
    ) -> None:
        """The positions of ``logits_to_keep``, the final LayerNorm and logits; ``output`` overrides the tied
        projection (an untied head)."""
        g = self.g
        x = g.node("Gather", [x, LOGITS_TO_KEEP], axis=1)  # [b, num_logits, hidden]: per-position work after it
        x = self.layernorm(x, "transformer.final_layernorm", final_weight, final_bias)
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
