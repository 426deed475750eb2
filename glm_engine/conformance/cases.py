"""The grid of op cases: one small class per op, instantiated over shapes; inputs are drawn fresh for each run.

A case makes its inputs in float64 on the CPU from a seeded generator, then runs them through any op table: the
oracle (float64 ``TorchOps``) and the backend under test see the same values, rounded once to the dtype under test.
``prepare`` does what a model does at load (e.g. ``prepare_quantized``) and is kept out of perf timings. Adding an op
means one class here and one line in the grid.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from glm_engine.ops.interface import Op, OpTable
from glm_engine.quant.formats import QuantFormat
from glm_engine.quant.weight import QuantizedWeight

Inputs = dict[str, Any]  # tensors (float64 / int / bool), QuantizedWeight or plain scalars

# GLM-130B's depth (70 layers): the largest layer scale attention sees, and DeepNorm's alpha = sqrt(2 * 70).
GLM130B_LAYERS = 70
GLM130B_ALPHA = math.sqrt(2 * GLM130B_LAYERS)
LAYERNORM_EPS = 1e-5  # GLM-130B's layernorm epsilon (glm_engine.config default)
# RMSNorm epsilons of the releases (docs/families.md): ChatGLM2/3 1e-5, GLM-4 1.5625e-07.
CHATGLM2_RMSNORM_EPS = 1e-5
GLM4_RMSNORM_EPS = 1.5625e-07
# ChatGLM2/3 and GLM-4 widths (their config.json): hidden 4096, 32 query heads of 128 over 2 key/value groups, fused
# QKV 4096 + 2 x 2 x 128 = 4608 rows, SwiGLU inner width 13696 (the gate-up projection's 27392 rows).
GLM4_HIDDEN, GLM4_HEADS, GLM4_GROUPS, GLM4_QKV, GLM4_INNER = 4096, 32, 2, 4608, 13696


def _normal(gen: torch.Generator, *shape: int, std: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * std


class OpCase(ABC):
    """One op at one shape: inputs, how to call the op, and its cost for perf mode."""

    op: ClassVar[Op]
    variant: ClassVar[str] = ""  # e.g. "prefill"/"decode" for attention; part of the threshold key
    quant_format: QuantFormat | None = None

    @property
    def check(self) -> str:
        """The key of this case's threshold row: ``op[:variant]`` or ``linear:<format>``."""
        if self.quant_format is not None:
            return f"{self.op.value}:{self.quant_format.value}"
        return f"{self.op.value}:{self.variant}" if self.variant else self.op.value

    @property
    @abstractmethod
    def shape(self) -> str:
        """The case's shape in words, e.g. ``b2 h4 sq17 sk17 d64``."""

    @property
    def case_id(self) -> str:
        return f"{self.check} {self.shape}"

    @abstractmethod
    def make_inputs(self, gen: torch.Generator) -> Inputs:
        """Fresh inputs in float64 (integer/bool tensors as they are) on the CPU."""

    def prepare(self, ops: OpTable, inputs: Inputs) -> Inputs:
        """What a model does once at load time before calling the op (default: nothing)."""
        return inputs

    @abstractmethod
    def run(self, ops: OpTable, inputs: Inputs) -> tuple[torch.Tensor, ...]:
        """Call the op; every output of the op, in order."""

    def kernel_detail(self, ops: OpTable, inputs: Inputs) -> str:
        """The kernel ``ops`` ran this case with and why, for the perf report ("" when there is nothing to say)."""
        return ""

    def flops(self) -> int:
        """Floating-point operations of one call (0: report bandwidth instead)."""
        return 0

    def bytes_moved(self, inputs: Inputs, outputs: tuple[torch.Tensor, ...]) -> int:
        """Bytes one call must read and write at least: every input and output once (quantized weights stored)."""
        total = sum(_nbytes(v) for v in inputs.values())
        return total + sum(_nbytes(t) for t in outputs)


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return getattr(value, "nbytes", 0) if not isinstance(value, (int, float)) else 0


@dataclass(frozen=True)
class EmbeddingCase(OpCase):
    op: ClassVar[Op] = Op.EMBEDDING
    batch: int
    seq: int
    vocab: int
    hidden: int

    @property
    def shape(self) -> str:
        return f"b{self.batch} s{self.seq} vocab{self.vocab} h{self.hidden}"

    def make_inputs(self, gen: torch.Generator) -> Inputs:
        ids = torch.randint(0, self.vocab, (self.batch, self.seq), generator=gen)
        ids[0, 0], ids[-1, -1] = 0, self.vocab - 1  # both ends of the table
        return {"input_ids": ids, "weight": _normal(gen, self.vocab, self.hidden)}

    def run(self, ops: OpTable, inputs: Inputs) -> tuple[torch.Tensor, ...]:
        return (ops.embedding(inputs["input_ids"], inputs["weight"]),)

    def bytes_moved(self, inputs: Inputs, outputs: tuple[torch.Tensor, ...]) -> int:
        return 2 * _nbytes(outputs[0]) + _nbytes(inputs["input_ids"])  # only the looked-up rows are read


@dataclass(frozen=True)
class LayerNormCase(OpCase):
    op: ClassVar[Op] = Op.LAYERNORM
    rows: int
    hidden: int

    @property
    def shape(self) -> str:
        return f"rows{self.rows} h{self.hidden}"

    def make_inputs(self, gen: torch.Generator) -> Inputs:
        x = _normal(gen, 1, self.rows, self.hidden, std=3.0) + 0.5  # a mean to remove, a scale to undo
        return {"x": x, "weight": 1 + _normal(gen, self.hidden, std=0.2), "bias": _normal(gen, self.hidden, std=0.1)}

    def run(self, ops: OpTable, inputs: Inputs) -> tuple[torch.Tensor, ...]:
        return (ops.layernorm(inputs["x"], inputs["weight"], inputs["bias"], LAYERNORM_EPS),)


@dataclass(frozen=True)
class RMSNormCase(OpCase):
    """RMSNorm with the gain applied after rounding the normalised values (native GLM classes) or before (THUDM's
    remote code, ``weight_in_fp32``); the variant names which."""

    op: ClassVar[Op] = Op.RMSNORM
    rows: int
    hidden: int
    weight_in_fp32: bool
    eps: float = CHATGLM2_RMSNORM_EPS

    @property
    def variant(self) -> str:  # type: ignore[override]
        return "weight-in-fp32" if self.weight_in_fp32 else "weight-in-dtype"

    @property
    def shape(self) -> str:
        return f"rows{self.rows} h{self.hidden} eps{self.eps:g}"

    def make_inputs(self, gen: torch.Generator) -> Inputs:
        x = _normal(gen, 1, self.rows, self.hidden, std=3.0) + 0.5  # a mean RMSNorm must keep (LayerNorm removes it)
        return {"x": x, "weight": 1 + _normal(gen, self.hidden, std=0.2)}

    def run(self, ops: OpTable, inputs: Inputs) -> tuple[torch.Tensor, ...]:
        return (ops.rmsnorm(inputs["x"], inputs["weight"], self.eps, self.weight_in_fp32),)


@dataclass(frozen=True)
class LinearCase(OpCase):
    """``x [1, m, k] @ W[n, k].T (+ bias)``; with ``bits`` the weight is quantized and prepared by the table."""

    op: ClassVar[Op] = Op.LINEAR
    m: int
    k: int
    n: int
    bias: bool = True
    bits: int | None = None
    group_size: int | None = None  # None: rowwise

    @property
    def quant_format(self) -> QuantFormat | None:  # type: ignore[override]
        if self.bits is None:
            return None
        rowwise = self.group_size is None
        if self.bits == 8:
            return QuantFormat.INT8_ROWWISE if rowwise else QuantFormat.INT8_GROUPWISE
        return QuantFormat.INT4_ROWWISE if rowwise else QuantFormat.INT4_GROUPWISE

    @property
    def shape(self) -> str:
        group = f" g{self.group_size}" if self.group_size else ""
        return f"m{self.m} k{self.k} n{self.n}{group}{'' if self.bias else ' nobias'}"

    def make_inputs(self, gen: torch.Generator) -> Inputs:
        weight = _normal(gen, self.n, self.k, std=self.k**-0.5)
        inputs: Inputs = {"x": _normal(gen, 1, self.m, self.k)}
        if self.bits is None:
            inputs["weight"] = weight
        else:  # quantized from its fp16 values, as the model's quantizer does; the oracle dequantizes it
            inputs["weight"] = QuantizedWeight.quantize(weight.float(), self.bits, self.group_size)
        inputs["bias"] = _normal(gen, self.n, std=0.1) if self.bias else None
        return inputs

    def prepare(self, ops: OpTable, inputs: Inputs) -> Inputs:
        if isinstance(inputs["weight"], QuantizedWeight):
            return {**inputs, "weight": ops.prepare_quantized(inputs["weight"])}
        return inputs

    def run(self, ops: OpTable, inputs: Inputs) -> tuple[torch.Tensor, ...]:
        return (ops.linear(inputs["x"], inputs["weight"], inputs["bias"]),)

    def flops(self) -> int:
        return 2 * self.m * self.k * self.n

    def kernel_detail(self, ops: OpTable, inputs: Inputs) -> str:
        return ops.linear_kernel(self.m, inputs["weight"], inputs["bias"])


@dataclass(frozen=True)
class RotaryCase(OpCase):
    op: ClassVar[Op] = Op.ROTARY
    batch: int
    seq: int
    heads: int
    head_dim: int

    @property
    def shape(self) -> str:
        return f"b{self.batch} s{self.seq} h{self.heads} d{self.head_dim}"

    def make_inputs(self, gen: torch.Generator) -> Inputs:
        b, s, h, d = self.batch, self.seq, self.heads, self.head_dim
        # Angles of arbitrary positions; frequency j covers dims j and j + d/2, as in the model's table.
        positions = torch.randint(0, 2048, (b, s, 1, 1), generator=gen).double()
        inv_freq = 1.0 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        angles = positions * torch.cat((inv_freq, inv_freq))
        return {"q": _normal(gen, b, s, h, d), "k": _normal(gen, b, s, h, d), "cos": angles.cos(), "sin": angles.sin()}

    def run(self, ops: OpTable, inputs: Inputs) -> tuple[torch.Tensor, ...]:
        return ops.rotary(inputs["q"], inputs["k"], inputs["cos"], inputs["sin"])


@dataclass(frozen=True)
class AttentionCase(OpCase):
    """GLM attention; ``context`` prefix tokens are bidirectional (prefill), the rest causal. Row 1 of a batch is
    left-padded by ``padding`` keys, which every query of that row must ignore."""

    op: ClassVar[Op] = Op.ATTENTION
    batch: int
    heads: int
    sq: int
    sk: int
    head_dim: int
    context: int
    layer_scale: float
    padding: int = 0

    @property
    def variant(self) -> str:  # type: ignore[override]
        return "decode" if self.sq == 1 else "prefill"

    @property
    def shape(self) -> str:
        pad = f" pad{self.padding}" if self.padding else ""
        return (
            f"b{self.batch} h{self.heads} sq{self.sq} sk{self.sk} d{self.head_dim} ctx{self.context} "
            f"ls{self.layer_scale:g}{pad}"
        )

    @property
    def kv_heads(self) -> int:
        """Key/value heads: one per query head here; fewer in :class:`GroupedAttentionCase`."""
        return self.heads

    def make_inputs(self, gen: torch.Generator) -> Inputs:
        b, h, sq, sk, d = self.batch, self.heads, self.sq, self.sk, self.head_dim
        blocked = torch.ones(sq, sk, dtype=torch.bool).triu(sk - sq + 1)  # query i sees keys up to its own position
        blocked[:, : self.context] = False
        blocked = blocked.expand(b, 1, sq, sk).clone()
        if self.padding and b > 1:
            blocked[1, :, :, : self.padding] = True
            rows = torch.arange(min(sq, self.padding))
            blocked[1, 0, rows, rows + sk - sq] = False  # a padded query still sees itself
        return {
            "q": _normal(gen, b, h, sq, d),
            "k": _normal(gen, b, self.kv_heads, sk, d),
            "v": _normal(gen, b, self.kv_heads, sk, d),
            "blocked": blocked,
            "layer_scale": self.layer_scale,
        }

    def run(self, ops: OpTable, inputs: Inputs) -> tuple[torch.Tensor, ...]:
        i = inputs
        return (ops.attention(i["q"], i["k"], i["v"], i["blocked"], i["layer_scale"]),)

    def flops(self) -> int:
        return 4 * self.batch * self.heads * self.sq * self.sk * self.head_dim


@dataclass(frozen=True)
class GroupedAttentionCase(AttentionCase):
    """:class:`AttentionCase` with ``groups`` key/value heads shared by the query heads (grouped-query attention:
    query head ``i`` reads key/value head ``i // (heads / groups)``; ``groups == heads`` is plain multi-head)."""

    op: ClassVar[Op] = Op.GROUPED_ATTENTION
    groups: int = 1

    def __post_init__(self) -> None:
        if self.groups < 1 or self.heads % self.groups:
            raise ValueError(f"{self.groups} key/value groups do not divide {self.heads} query heads")

    @property
    def kv_heads(self) -> int:
        return self.groups

    @property
    def shape(self) -> str:
        return super().shape.replace(f"h{self.heads} ", f"h{self.heads} g{self.groups} ", 1)


@dataclass(frozen=True)
class GegluCase(OpCase):
    op: ClassVar[Op] = Op.GEGLU
    rows: int
    inner: int

    @property
    def shape(self) -> str:
        return f"rows{self.rows} inner{self.inner}"

    def make_inputs(self, gen: torch.Generator) -> Inputs:
        return {"x": _normal(gen, 1, self.rows, 2 * self.inner, std=2.0)}

    def run(self, ops: OpTable, inputs: Inputs) -> tuple[torch.Tensor, ...]:
        return (ops.geglu(inputs["x"]),)


@dataclass(frozen=True)
class GeluCase(OpCase):
    op: ClassVar[Op] = Op.GELU
    rows: int
    width: int

    @property
    def shape(self) -> str:
        return f"rows{self.rows} w{self.width}"

    def make_inputs(self, gen: torch.Generator) -> Inputs:
        return {"x": _normal(gen, 1, self.rows, self.width, std=2.0)}

    def run(self, ops: OpTable, inputs: Inputs) -> tuple[torch.Tensor, ...]:
        return (ops.gelu(inputs["x"]),)


@dataclass(frozen=True)
class SwigluCase(GegluCase):
    """GeGLU's inputs (gate and value halves of one row) through SwiGLU."""

    op: ClassVar[Op] = Op.SWIGLU

    def run(self, ops: OpTable, inputs: Inputs) -> tuple[torch.Tensor, ...]:
        return (ops.swiglu(inputs["x"]),)


@dataclass(frozen=True)
class DeepNormResidualCase(OpCase):
    op: ClassVar[Op] = Op.DEEPNORM_RESIDUAL
    rows: int
    hidden: int
    alpha: float = GLM130B_ALPHA

    @property
    def shape(self) -> str:
        return f"rows{self.rows} h{self.hidden} alpha{self.alpha:.3g}"

    def make_inputs(self, gen: torch.Generator) -> Inputs:
        return {"normed": _normal(gen, 1, self.rows, self.hidden), "branch": _normal(gen, 1, self.rows, self.hidden)}

    def run(self, ops: OpTable, inputs: Inputs) -> tuple[torch.Tensor, ...]:
        return (ops.deepnorm_residual(inputs["normed"], inputs["branch"], self.alpha),)


def _quantized_linears(m: int, k: int, n: int) -> list[OpCase]:
    """Each quantized format at one shape: rowwise, and groupwise at the smallest and largest offered group size."""
    cases: list[OpCase] = []
    for bits in (8, 4):
        cases.append(LinearCase(m, k, n, bits=bits))
        cases.extend(LinearCase(m, k, n, bits=bits, group_size=g) for g in (32, 128))
    return cases


# The test grid: decode-sized and prefill-sized rows, odd sizes that do not fill vector lanes, GLM-130B widths where
# they stay cheap in float64 (hidden 12288, head dim 128, layer scale 70), and the ChatGLM2/GLM-4 widths that shape
# kernels: the down projection's K of 13696 (107 x 128, not a multiple of 256) and 32 query heads over 2 groups.
# The whole grid runs in seconds on a CPU.
TEST_CASES: tuple[OpCase, ...] = (
    EmbeddingCase(1, 7, 512, 64),
    EmbeddingCase(2, 33, 3001, 256),
    LayerNormCase(7, 64),
    LayerNormCase(5, 12288),
    RMSNormCase(7, 64, weight_in_fp32=False),
    RMSNormCase(7, 64, weight_in_fp32=True),
    RMSNormCase(5, GLM4_HIDDEN, weight_in_fp32=False, eps=GLM4_RMSNORM_EPS),
    RMSNormCase(5, GLM4_HIDDEN, weight_in_fp32=True, eps=GLM4_RMSNORM_EPS),
    LinearCase(1, 64, 96),
    LinearCase(7, 256, 384, bias=False),
    LinearCase(33, 512, 1000),
    *_quantized_linears(1, 256, 200),
    *_quantized_linears(17, 512, 320),
    *_quantized_linears(1, GLM4_INNER, 32),
    *_quantized_linears(17, GLM4_INNER, 32),
    RotaryCase(1, 7, 4, 64),
    RotaryCase(2, 33, 2, 128),
    AttentionCase(2, 4, 17, 17, 64, context=9, layer_scale=1.0, padding=3),
    AttentionCase(1, 2, 64, 64, 128, context=40, layer_scale=float(GLM130B_LAYERS)),
    AttentionCase(2, 4, 1, 33, 64, context=20, layer_scale=1.0, padding=5),
    AttentionCase(1, 2, 1, 257, 128, context=100, layer_scale=float(GLM130B_LAYERS)),
    GroupedAttentionCase(2, 8, 17, 17, 64, context=9, layer_scale=1.0, padding=3, groups=2),
    GroupedAttentionCase(1, 8, 33, 33, 128, context=20, layer_scale=1.0, groups=1),
    GroupedAttentionCase(2, 4, 17, 17, 64, context=9, layer_scale=1.0, padding=3, groups=4),
    GroupedAttentionCase(2, 8, 1, 33, 64, context=20, layer_scale=1.0, padding=5, groups=2),
    GroupedAttentionCase(1, GLM4_HEADS, 1, 257, 128, context=100, layer_scale=28.0, groups=GLM4_GROUPS),
    GroupedAttentionCase(1, 8, 1, 40, 64, context=10, layer_scale=1.0, groups=1),
    GroupedAttentionCase(2, 4, 1, 33, 64, context=20, layer_scale=1.0, padding=5, groups=4),
    GegluCase(7, 96),
    GegluCase(3, 4096),
    GeluCase(7, 96),
    GeluCase(3, 4096),
    SwigluCase(7, 96),
    SwigluCase(3, GLM4_INNER),
    DeepNormResidualCase(7, 64),
    DeepNormResidualCase(5, 12288),
)

# Quantized products of one row at ChatGLM-6B's hidden size and at ChatGLM2/3 and GLM-4's fused QKV, SwiGLU gate-up
# and down projections, as (in, out).
PERF_QUANT_SHAPES = ((4096, 4096), (GLM4_HIDDEN, GLM4_QKV), (GLM4_HIDDEN, 2 * GLM4_INNER), (GLM4_INNER, GLM4_HIDDEN))

# The perf grid: ChatGLM-6B-sized ops (hidden 4096, 32 heads of 128) and ChatGLM2/GLM-4's (32 query heads over 2
# key/value groups, SwiGLU over 13696) at decode (one row) and a 128-token prefill.
PERF_CASES: tuple[OpCase, ...] = (
    EmbeddingCase(1, 128, 8192, 4096),  # a lookup costs the same whatever the vocabulary; keeps inputs small
    LayerNormCase(128, 4096),
    RMSNormCase(128, GLM4_HIDDEN, weight_in_fp32=False),
    LinearCase(1, 4096, 4096),
    LinearCase(128, 4096, 4096),
    *(LinearCase(1, k, n, bits=b, group_size=g) for k, n in PERF_QUANT_SHAPES for b in (8, 4) for g in (None, 128)),
    RotaryCase(1, 128, 32, 128),
    AttentionCase(1, 32, 128, 128, 128, context=64, layer_scale=1.0),
    AttentionCase(1, 32, 1, 1024, 128, context=512, layer_scale=1.0),
    GroupedAttentionCase(1, GLM4_HEADS, 128, 128, 128, context=64, layer_scale=1.0, groups=GLM4_GROUPS),
    GroupedAttentionCase(1, GLM4_HEADS, 1, 1024, 128, context=512, layer_scale=1.0, groups=GLM4_GROUPS),
    GegluCase(128, 16384),
    GeluCase(128, 16384),
    SwigluCase(128, GLM4_INNER),
    DeepNormResidualCase(128, 4096),
)


def select(cases: tuple[OpCase, ...], ops: list[Op] | None = None) -> list[OpCase]:
    """The cases of the given ops (all when None), in grid order."""
    return [c for c in cases if ops is None or c.op in ops]
