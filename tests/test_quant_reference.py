"""The reference's INT8/INT4 formula against an independent numpy transcription of
docs/glm-semantics.md#weight-only-quantization-formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glm_engine.quant import reference
from glm_engine.quant.reference import dequantize, pack_int4, quantize, quantize_rowwise, unpack_int4


def numpy_reference(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """scale = fp16(absmax / (2**(bits-1)-1)); q = round_half_even(fp16(W / scale)), divisions in fp32 then fp16."""
    w = weight.astype(np.float16)
    absmax = np.abs(w).max(axis=1).astype(np.float32)
    scale = (absmax / np.float32(2 ** (bits - 1) - 1)).astype(np.float16)
    quotient = (w.astype(np.float32) / scale.astype(np.float32)[:, None]).astype(np.float16)
    return np.round(quotient.astype(np.float32)).astype(np.int8), scale


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_matches_independent_formula(bits: int) -> None:
    weight = torch.randn(64, 96, generator=torch.Generator().manual_seed(bits)) * 0.05
    weight[3, 7] = 0.9  # an outlier row
    q, scale = quantize_rowwise(weight, bits)
    expected_q, expected_scale = numpy_reference(weight.numpy(), bits)
    assert np.array_equal(scale.numpy(), expected_scale)
    assert np.array_equal(q.numpy(), expected_q)
    limit = 2 ** (bits - 1) - 1
    assert int(q.abs().max()) == limit and int(q.min()) >= -limit


def test_int4_packs_even_column_in_the_high_nibble() -> None:
    q = torch.tensor([[1, -2, -7, 7]], dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.view(torch.uint8).tolist() == [[0x1E, 0x97]]  # 1|-2 -> 0x1E; -7|7 -> 0x97
    assert torch.equal(unpack_int4(packed), q)


@pytest.mark.parametrize("bits", [8, 4])
def test_dequantize_is_half_times_scale(bits: int) -> None:
    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(7))
    stored, scale = quantize(weight, bits)
    q, _ = quantize_rowwise(weight, bits)
    expected = q.to(torch.float16) * scale[:, None]
    assert torch.equal(dequantize(stored, scale, bits), expected)
    # half a step of rounding, plus fp16 rounding of the quotient (ulp 1/16 near 127) and of the product
    error = (dequantize(stored, scale, bits, torch.float32) - weight.half().float()).abs()
    assert (error <= 0.55 * scale.float()[:, None] + weight.abs() * 2**-10).all()


def test_grouped_scales_dequantize_each_column_block() -> None:
    q = torch.ones(2, 6, dtype=torch.int8)
    scale = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float16)
    assert dequantize(q, scale, 8, torch.float32).tolist() == [[1, 1, 1, 2, 2, 2], [3, 3, 3, 4, 4, 4]]


def test_zero_rows_quantize_to_zero() -> None:
    q, scale = quantize_rowwise(torch.zeros(2, 4), 8)
    assert scale.tolist() == [0.0, 0.0] and q.abs().sum() == 0


def test_tiny_scales_saturate_instead_of_wrapping_around():
    """A subnormal fp16 scale can put |W/scale| above 127.5; the int8 cast must not flip the weight's sign."""
    q, _ = quantize_rowwise(torch.tensor([[2e-4, -2e-4, 1e-4, 0.0]]), 8)
    assert q[0, 0] > 0 and q[0, 1] < 0 and int(q.abs().max()) <= 127


@pytest.mark.parametrize("bits", [8, 4])
def test_quantizing_in_blocks_of_rows_gives_the_same_bytes(monkeypatch, bits):
    """The row blocks that bound quantization's temporaries change nothing: zero rows, subnormal scales, a last
    partial block included."""
    weight = torch.randn(37, 24, dtype=torch.float16) * 3
    weight[5] = 0
    weight[11] = 1e-7
    whole_q, whole_scale = reference.quantize_rowwise(weight, bits)
    monkeypatch.setattr(reference, "QUANTIZE_BLOCK_ELEMENTS", 24 * 4)
    q, scale = reference.quantize_rowwise(weight, bits)
    assert torch.equal(q, whole_q) and torch.equal(scale, whole_scale)
    assert torch.equal(q[5], torch.zeros(24, dtype=torch.int8))
