"""The parts a family's decoder block is built from, named once so the graph and the exporter choose by part.

A family describes its block with :class:`BlockParts`; :mod:`glm_engine.model.block` (and the ONNX exporter) pick an
implementation per part and never ask which family they run. Adding a family that mixes existing parts needs no
change here; a new kind of part (RMSNorm, SwiGLU, grouped-query attention ...) is a new member plus its
implementation in the block. See ``docs/families.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from glm_engine.ops.interface import Op


class Norm(str, Enum):
    """How hidden states are normalised before attention, before the MLP and at the end."""

    LAYERNORM = "layernorm"  # torch.nn.LayerNorm with weight and bias
    RMSNORM = "rmsnorm"  # root-mean-square norm with a gain (``BlockParts.norm_weight_in_fp32`` says where it rounds)


class Residual(str, Enum):
    """How a branch's output rejoins the stream."""

    DEEPNORM = "deepnorm"  # ``normed * alpha + branch``: the residual is the LayerNorm *output*, scaled (GLM)
    PRENORM = "prenorm"  # ``x + branch``: the residual is the block's input (ChatGLM2 and later)


class Activation(str, Enum):
    """The MLP between its two linears."""

    GEGLU = "geglu"  # ``x1 * gelu_erf(x2)`` over the halves of the h->4h output (GLM-130B)
    GELU_TANH = "gelu-tanh"  # tanh-approximated GeLU over the whole h->4h output (ChatGLM-6B)
    SWIGLU = "swiglu"  # ``silu(gate) * up`` over the ``[gate | up]`` halves of the h->4h output (ChatGLM2 and later)


class Rotary(str, Enum):
    """Which dimensions of each head rotate, by which position row (rotate-half pairs ``i, i + n/2`` in both)."""

    WHOLE_HEAD = "whole-head"  # position ids ``[b, s]`` rotate all ``d`` dimensions (GLM-130B)
    TWO_HALVES = "two-halves"  # 2-D positions ``[b, 2, s]``: ids rotate dims ``[0, d/2)``, block ids ``[d/2, d)``
    PARTIAL_INTERLEAVED = "partial-interleaved"  # ``[b, s]`` positions rotate the first ``rotary_dims`` dims in
    # GPT-J pairs ``(2i, 2i + 1)``; the rest pass through (ChatGLM2 and later)


class QKVLayout(str, Enum):
    """How the rows of the fused query/key/value weight are ordered."""

    PER_HEAD = "per-head"  # ``[q | k | v]`` for each head in turn (SAT, ChatGLM-6B)
    GROUPED = "grouped"  # all query heads, then the key heads, then the value heads (``kv_heads`` of each)


class DenseBias(str, Enum):
    """Where the bias of a row-parallel linear (attention output, MLP down projection) is added."""

    AFTER_PRODUCT = (
        "after-product"  # SAT's RowParallelLinear: the product (all-reduced), then ``+ bias``, rounded apart
    )
    FUSED = "fused"  # nn.Linear: inside the GEMM in one process; after the all-reduce when tensor parallel


@dataclass(frozen=True)
class BlockParts:
    """One family's choice for every part of its decoder block, plus the numbers those parts take."""

    activation: Activation
    rotary: Rotary
    dense_bias: DenseBias
    deepnorm_alpha: float = 1.0  # the residual scale of ``Residual.DEEPNORM``
    norm: Norm = Norm.LAYERNORM
    residual: Residual = Residual.DEEPNORM
    norm_weight_in_fp32: bool = False  # RMSNorm: gain applied before the rounding (remote code) or after (native)
    post_branch_norm: bool = False  # an RMSNorm on each branch's output before the residual (GLM-4-0414)
    qkv: QKVLayout = QKVLayout.PER_HEAD
    kv_heads: int | None = None  # key/value heads (grouped-query attention); None: one per query head
    rotary_dims: int | None = None  # dims of each head ``Rotary.PARTIAL_INTERLEAVED`` rotates
    layer_scaled_attention: bool = True  # the reference's query-key layer scaling (layer index + 1)

    @property
    def position_rows(self) -> int:
        """Rows of position ids the graph takes: 1 (``[b, s]``) or 2 (``[b, 2, s]``)."""
        return 2 if self.rotary is Rotary.TWO_HALVES else 1

    def required_ops(self) -> frozenset[Op]:
        """The ops a backend must implement to run a block made of these parts (asked before loading)."""
        ops = {Op.EMBEDDING, Op.LINEAR, Op.ROTARY, Op.ATTENTION}
        ops.add(Op.LAYERNORM if self.norm is Norm.LAYERNORM else Op.RMSNORM)
        ops.add(
            {Activation.GEGLU: Op.GEGLU, Activation.GELU_TANH: Op.GELU, Activation.SWIGLU: Op.SWIGLU}[self.activation]
        )
        if self.residual is Residual.DEEPNORM:
            ops.add(Op.DEEPNORM_RESIDUAL)
        if self.kv_heads is not None:
            ops.add(Op.GROUPED_ATTENTION)
        return frozenset(ops)
