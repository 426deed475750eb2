"""The suite's self-test: op tables with one deliberate, realistic bug each, which the test mode must catch.

Each broken table is ``TorchOps`` with one op overridden; it runs through the same ``run_tests`` as a real backend
(on the CPU backend, its op table replaced) and is caught when at least one of that op's rows fails. The correct
``TorchOps`` must pass the same rows, or the suite would be flagging everything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glm_engine.backends.registry import get_backend
from glm_engine.conformance.runner import OpLevelBackend, Status, run_tests
from glm_engine.ops.interface import Op, OpTable, PackedLinear
from glm_engine.ops.torch_ops import DequantizingLinear, TorchOps, reference_attention
from glm_engine.quant.weight import QuantizedWeight


class WrongAttentionScale(TorchOps):
    """Scores scaled by 1/d instead of 1/sqrt(d)."""

    def attention(self, q, k, v, blocked, layer_scale):  # type: ignore[no-untyped-def]
        return reference_attention(q / math.sqrt(q.shape[-1]), k, v, blocked, layer_scale)


class LayerScaleNotUndone(TorchOps):
    """q divided by the layer scale, but the fp32 scores never multiplied back (only deep layers show it)."""

    def attention(self, q, k, v, blocked, layer_scale):  # type: ignore[no-untyped-def]
        return reference_attention(q / layer_scale, k, v, blocked, 1.0)


class MissingMask(TorchOps):
    """Every query attends to every key: the blocked mask is ignored."""

    def attention(self, q, k, v, blocked, layer_scale):  # type: ignore[no-untyped-def]
        return reference_attention(q, k, v, torch.zeros_like(blocked), layer_scale)


class TransposedRotary(TorchOps):
    """GPT-J-style rotary: dimension i pairs with i + 1 instead of i + d/2."""

    def rotary(self, q, k, cos, sin):  # type: ignore[no-untyped-def]
        def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
            return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)

        return q * cos + rotate_pairs(q) * sin, k * cos + rotate_pairs(k) * sin


class FirstGroupScaleOnly(TorchOps):
    """Quantized weights dequantized with each row's first group scale for the whole row (groupwise is wrong)."""

    def prepare_quantized(self, weight: QuantizedWeight) -> PackedLinear:
        scale = weight.scale[:, :1].expand_as(weight.scale).contiguous()
        return DequantizingLinear(QuantizedWeight(weight.stored, scale, weight.bits).to(self.device))


class RoundRobinKVGroups(TorchOps):
    """Grouped key/value heads handed out round-robin (query head i reads head i % groups, not i // (heads/groups)):
    ``repeat`` where ``repeat_interleave`` belongs."""

    def attention(self, q, k, v, blocked, layer_scale):  # type: ignore[no-untyped-def]
        repeats = q.shape[1] // k.shape[1]
        return reference_attention(q, k.repeat(1, repeats, 1, 1), v.repeat(1, repeats, 1, 1), blocked, layer_scale)


class SwappedSwigluHalves(TorchOps):
    """SwiGLU with the halves swapped: ``silu(up) * gate``."""

    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(up) * gate


class CenteredRmsNorm(TorchOps):
    """RMSNorm that subtracts the mean first (a LayerNorm without bias)."""

    def rmsnorm(self, x, weight, eps, weight_in_fp32=False):  # type: ignore[no-untyped-def]
        return super().rmsnorm(x - x.mean(-1, keepdim=True), weight, eps, weight_in_fp32)


class UnwrittenOutput(TorchOps):
    """GeGLU into a fresh buffer whose last column is never written."""

    def geglu(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        out = torch.empty_like(x1)
        out[..., :-1] = x1[..., :-1] * F.gelu(x2[..., :-1])
        return out


class WrongOutputDtype(TorchOps):
    """fp16/bf16 linear computed and returned in fp32."""

    def linear(self, x, weight, bias):  # type: ignore[no-untyped-def]
        if isinstance(weight, PackedLinear):
            return super().linear(x, weight, bias)
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float())


# Each broken table and the op whose rows must catch it.
BROKEN_TABLES: tuple[tuple[type[TorchOps], Op], ...] = (
    (WrongAttentionScale, Op.ATTENTION),
    (LayerScaleNotUndone, Op.ATTENTION),
    (MissingMask, Op.ATTENTION),
    (TransposedRotary, Op.ROTARY),
    (FirstGroupScaleOnly, Op.LINEAR),
    (UnwrittenOutput, Op.GEGLU),
    (WrongOutputDtype, Op.LINEAR),
    (RoundRobinKVGroups, Op.GROUPED_ATTENTION),
    (SwappedSwigluHalves, Op.SWIGLU),
    (CenteredRmsNorm, Op.RMSNORM),
)


@dataclass
class SelfTestResult:
    table: str
    op: str
    caught: bool
    failed_rows: int
    rows: int
    example: str  # the first failing row's reason


def _run(table: type[TorchOps], op: Op, backend: OpLevelBackend, seed: int | None) -> SelfTestResult:
    def factory(dtype: torch.dtype) -> OpTable:
        return table(torch.device("cpu"), dtype)

    run = run_tests(backend, ops=[op], seed=seed, table_factory=factory)
    ran = [r for r in run.results if r.status is not Status.SKIP]
    failed = run.failed
    example = f"{failed[0].check} {failed[0].shape} {failed[0].dtype}: {failed[0].detail}" if failed else ""
    caught = bool(failed) if table is not TorchOps else not failed
    return SelfTestResult(table.__name__, op.value, caught, len(failed), len(ran), example)


def self_test(seed: int | None = None) -> list[SelfTestResult]:
    """Run every broken table (each must fail some rows) and the correct TorchOps (must pass every row).

    For the correct table ``caught`` means "passed cleanly", so every result should read ``caught=True``."""
    backend = get_backend("cpu")
    assert isinstance(backend, OpLevelBackend)
    results = [_run(table, op, backend, seed) for table, op in BROKEN_TABLES]
    ops = sorted({op for _, op in BROKEN_TABLES}, key=list(Op).index)
    results.extend(_run(TorchOps, op, backend, seed) for op in ops)
    return results
