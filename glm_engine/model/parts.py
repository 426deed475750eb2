"""The parts a family's decoder block is built from, named once so the graph and the exporter choose by part.

A family describes its block with :class:`BlockParts`; :mod:`glm_engine.model.block` (and the ONNX exporter) pick an
implementation per part and never ask which family they run. Adding a family that mixes existing parts needs no
change here; a new kind of part (RMSNorm, SwiGLU, grouped-query attention ...) is a new member plus its
implementation in the block. See ``docs/families.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Norm(str, Enum):
    """How hidden states are normalised before attention, before the MLP and at the end."""

    LAYERNORM = "layernorm"  # torch.nn.LayerNorm with weight and bias


class Residual(str, Enum):
    """How a branch's output rejoins the stream."""

    DEEPNORM = "deepnorm"  # ``normed * alpha + branch``: the residual is the LayerNorm *output*, scaled (GLM)


class Activation(str, Enum):
    """The MLP between its two linears."""

    GEGLU = "geglu"  # ``x1 * gelu_erf(x2)`` over the halves of the h->4h output (GLM-130B)
    GELU_TANH = "gelu-tanh"  # tanh-approximated GeLU over the whole h->4h output (ChatGLM-6B)


class Rotary(str, Enum):
    """Which dimensions of each head rotate, by which position row (rotate-half pairs ``i, i + n/2`` in both)."""

    WHOLE_HEAD = "whole-head"  # position ids ``[b, s]`` rotate all ``d`` dimensions (GLM-130B)
    TWO_HALVES = "two-halves"  # 2-D positions ``[b, 2, s]``: ids rotate dims ``[0, d/2)``, block ids ``[d/2, d)``


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
    deepnorm_alpha: float  # the residual scale of ``Residual.DEEPNORM``
    norm: Norm = Norm.LAYERNORM
    residual: Residual = Residual.DEEPNORM

    @property
    def position_rows(self) -> int:
        """Rows of position ids the graph takes: 1 (``[b, s]``) or 2 (``[b, 2, s]``)."""
        return 2 if self.rotary is Rotary.TWO_HALVES else 1
