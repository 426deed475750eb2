"""QuantizedWeight: the stored form every backend starts from, and the portable dequantizing linear."""

from __future__ import annotations

import pytest
import torch

from glm_engine.errors import CheckpointError
from glm_engine.ops.torch_ops import TorchOps
from glm_engine.quant.formats import QuantFormat
from glm_engine.quant.reference import quantize_rowwise
from glm_engine.quant.weight import QuantizedWeight


def weight(out: int = 16, columns: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(out, columns, generator=torch.Generator().manual_seed(seed)) * 0.05


@pytest.mark.parametrize(
    ("bits", "group_size", "fmt"),
    [(8, None, "int8-rowwise"), (4, None, "int4-rowwise"), (8, 32, "int8-groupwise"), (4, 32, "int4-groupwise")],
)
def test_formats_shapes_and_round_trip(bits, group_size, fmt):
    w = weight()
    q = QuantizedWeight.quantize(w, bits, group_size)
    assert q.format is QuantFormat(fmt)
    assert (q.out_features, q.in_features, q.group_size) == (16, 64, group_size or 64)
    assert q.stored.shape == (16, 64 * bits // 8) and q.scale.dtype == torch.float16
    step = q.scale.float().repeat_interleave(q.group_size, dim=1)
    assert ((q.dequantize(torch.float32) - w.half().float()).abs() <= 0.55 * step + w.abs() * 2**-10).all()


def test_rowwise_is_the_reference_formula_and_groups_are_rowwise_per_block():
    w = weight()
    q = QuantizedWeight.quantize(w, 4)
    ref_q, ref_scale = quantize_rowwise(w, 4)
    assert torch.equal(q.values(), ref_q) and torch.equal(q.scale[:, 0], ref_scale)
    grouped = QuantizedWeight.quantize(w, 8, 16)
    first_block_q, first_block_scale = quantize_rowwise(w[:, :16], 8)
    assert torch.equal(grouped.values()[:, :16], first_block_q) and torch.equal(grouped.scale[:, 0], first_block_scale)


def test_groupwise_is_more_accurate_than_rowwise_with_outliers():
    w = weight(64, 256)
    w[:, 7] *= 20  # one outlier column, as GLM-130B's activations-facing weights have
    errors = {g: (QuantizedWeight.quantize(w, 4, g).dequantize(torch.float32) - w).pow(2).mean() for g in (None, 32)}
    assert errors[32] < errors[None] / 2


def test_bad_shapes_are_refused():
    with pytest.raises(CheckpointError, match="group size 48 must divide"):
        QuantizedWeight.quantize(weight(), 4, 48)
    with pytest.raises(CheckpointError, match="do not fit"):
        QuantizedWeight(torch.zeros(4, 8, dtype=torch.int8), torch.ones(4, 3, dtype=torch.float16), 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_portable_packed_linear_is_dequantize_then_matmul(dtype):
    ops = TorchOps(torch.device("cpu"), dtype)  # the portable ops (the CPU backend's own kernels run in bf16)
    q = QuantizedWeight.quantize(weight(), 4, 32)
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(1)).to(dtype)
    bias = torch.randn(16).to(dtype)
    packed = ops.prepare_quantized(q)
    expected = x.float() @ q.dequantize(torch.float32).T + bias.float()
    got = ops.linear(x, packed, bias).float()
    assert ((got - expected).pow(2).mean() / expected.pow(2).mean()) < (1e-12 if dtype == torch.float32 else 1e-4)
