"""Ascend quantized linears: the layout handed to torch_npu, checked on the CPU against the documented semantics.

``TorchNpuDouble`` (tests/npu_double.py) implements the two torch_npu ops as their documentation and op-plugin's source
describe them (shape checks, group-size rule, INT4 bit layout, ``x @ (weight * antiquant_scale)``), so the conversion
and the calls are exercised without an NPU; that is not device conformance. The last test runs the real ops and
skips with the reason where no NPU is.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from bounds import max_nmse, nmse
from npu_double import TorchNpuDouble

from glm_engine.backends.ascend.ops import AscendOps
from glm_engine.backends.ascend.quant import (
    MAX_KN,
    MAX_N_PER_CALL,
    NpuQuantLinear,
    antiquant_group_size,
    antiquant_scale,
    column_blocks,
    int4_values,
    int8_weight,
    unsupported_reason,
)
from glm_engine.backends.ascend.soc import SocFamily
from glm_engine.backends.registry import get_backend, op_table_for
from glm_engine.errors import BackendError
from glm_engine.ops.torch_ops import DequantizingLinear
from glm_engine.quant.weight import QuantizedWeight


def quantized(out: int, columns: int, bits: int, group_size: int | None, seed: int = 0) -> QuantizedWeight:
    weight = torch.randn(out, columns, generator=torch.Generator().manual_seed(seed)) * 0.05
    return QuantizedWeight.quantize(weight, bits, group_size)


@pytest.mark.parametrize(("bits", "group_size"), [(8, None), (8, 32), (4, None), (4, 64)])
def test_layout_dequantizes_to_the_stored_weight_by_the_documented_formula(bits, group_size):
    weight = quantized(24, 128, bits, group_size)
    scale = antiquant_scale(weight, torch.float16)
    groups = weight.groups
    assert scale.shape == (groups, 24) and scale.dtype == torch.float16 and scale.t().is_contiguous()
    assert antiquant_group_size(weight) == (group_size or 0)
    values = int8_weight(weight) if bits == 8 else int4_values(weight).t()
    assert values.shape == (128, 24)
    if bits == 8:
        assert values.data_ptr() == weight.stored.data_ptr()  # a view: no copy of the weight
    else:
        assert int4_values(weight).dtype == torch.int32 and int4_values(weight).is_contiguous()
    dequantized = values.to(torch.float16) * scale.repeat_interleave(128 // groups, dim=0)
    assert torch.equal(dequantized, weight.dequantize(torch.float16).t())


def test_int4_packing_round_trips_through_the_documented_bit_layout():
    weight = quantized(16, 64, 4, None)
    words = TorchNpuDouble.npu_convert_weight_to_int4pack(int4_values(weight))
    assert words.shape == (16, 8)
    assert torch.equal(TorchNpuDouble.unpack(words), weight.values().to(torch.int64))
    first = int(weight.values()[0, 0]) & 0xF
    assert int(words[0, 0]) & 0xF == first  # column 0 in the LOW nibble there, the high one in glm-engine's bytes
    assert (int(weight.stored[0, 0]) >> 4) & 0xF == first


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(("bits", "group_size"), [(8, None), (8, 64), (4, None), (4, 32)])
def test_ascend_table_prepares_and_calls_the_npu_op(bits, group_size, dtype):
    ops = AscendOps(torch.device("cpu"), dtype, npu=TorchNpuDouble(), family=SocFamily.ATLAS_A2)
    weight = quantized(32, 128, bits, group_size)
    packed = ops.prepare_quantized(weight)
    assert isinstance(packed, NpuQuantLinear)
    assert ops.quant_path[weight.format.value] == "torch_npu.npu_weight_quant_batchmatmul"
    assert packed.nbytes == weight.stored.numel() + weight.scale.numel() * 2
    x = torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(5)).to(dtype)
    got = ops.linear(x, packed, None)
    expected = DequantizingLinear(weight)(x.float())
    assert got.shape == (2, 3, 32) and got.dtype == dtype
    assert nmse(got, expected) <= max_nmse(f"linear:{weight.format.value}", dtype)


def test_what_the_npu_op_cannot_run_falls_back_with_the_reason():
    fp32 = AscendOps(torch.device("cpu"), torch.float32, npu=TorchNpuDouble(), family=SocFamily.ATLAS_A2)
    assert isinstance(fp32.prepare_quantized(quantized(8, 64, 8, None)), DequantizingLinear)
    assert "fp16/bf16" in fp32.quant_path["int8-rowwise"]
    assert "multiple of 32" in unsupported_reason(quantized(8, 96, 8, 48), torch.float16)
    assert "multiple of 8" in unsupported_reason(quantized(8, 36, 4, None), torch.float16)
    with pytest.raises(BackendError, match=r"prepared for torch\.float16"):
        NpuQuantLinear(quantized(8, 64, 8, None), torch.float16, TorchNpuDouble())(torch.zeros(1, 64))


@pytest.mark.parametrize(
    ("n", "widths"),
    [
        (65535, [65535]),  # at the documented limit: one call
        (65536, [32768, 32768]),  # GLM-130B's TP=1 dense_h_to_4h
        (130528, [65280, 65248]),  # a quantized GLM-4 output projection (--quant-output)
        (150528, [50176, 50176, 50176]),  # a quantized GLM-130B output projection
    ],
)
def test_columns_beyond_the_ops_n_limit_are_split_into_aligned_blocks(n, widths):
    blocks = column_blocks(n)
    assert [b - a for a, b in blocks] == widths
    assert blocks[0][0] == 0 and blocks[-1][1] == n and all(x[1] == y[0] for x, y in pairwise(blocks))
    assert all(b - a <= (MAX_KN if len(blocks) == 1 else MAX_N_PER_CALL) for a, b in blocks)
    assert all((b - a) % 64 == 0 for a, b in blocks[:-1])


@pytest.mark.parametrize(("bits", "group_size"), [(8, None), (4, 32)])
def test_a_weight_wider_than_the_ops_n_limit_runs_in_column_blocks(bits, group_size):
    """N = 65600 > 65535: the double refuses it in one call (the documented limit), the table splits it."""
    npu = TorchNpuDouble()
    weight = quantized(MAX_KN + 65, 64, bits, group_size, seed=7)
    wide = quantized(MAX_KN + 65, 64, 8, None, seed=7)
    with pytest.raises(AssertionError, match="K and N in"):
        npu.npu_weight_quant_batchmatmul(torch.zeros(1, 64).half(), wide.stored.t(), torch.ones(1, MAX_KN + 65).half())
    ops = AscendOps(torch.device("cpu"), torch.float16, npu=npu, family=SocFamily.ATLAS_A2)
    packed = ops.prepare_quantized(weight)
    assert "split into 2 calls" in ops.quant_path[weight.format.value]
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(8)).half()
    npu.calls.clear()
    got = packed(x)
    calls = [args for name, args in npu.calls if name == "npu_weight_quant_batchmatmul"]
    assert [(c["n"], c["m"]) for c in calls] == [(32832, 3), (32768, 3)]
    if bits == 8:  # each block is a view of the stored bytes: no copy of the weight
        assert calls[1]["weight"].data_ptr() == weight.stored[32832:].data_ptr()
    assert got.shape == (3, MAX_KN + 65)
    assert nmse(got, DequantizingLinear(weight)(x.float())) <= max_nmse(f"linear:{weight.format.value}", torch.float16)


def test_an_input_wider_than_the_ops_k_limit_is_dequantized_with_the_reason():
    weight = quantized(4, MAX_KN + 1, 8, None)
    assert f"K <= {MAX_KN}" in unsupported_reason(weight, torch.float16, SocFamily.ATLAS_A2)
    ops = AscendOps(torch.device("cpu"), torch.float16, npu=TorchNpuDouble(), family=SocFamily.ATLAS_A2)
    assert isinstance(ops.prepare_quantized(weight), DequantizingLinear)
    assert "input width is 65536" in ops.quant_path["int8-rowwise"]


def test_ascend_backend_declares_the_formats_and_how_they_run():
    backend = get_backend("ascend")
    assert len(backend.quant_formats()) == 4
    from glm_engine.ops.interface import Op
    from glm_engine.quant.formats import QuantFormat

    assert "npu_convert_weight_to_int4pack" in backend.support_note(
        Op.LINEAR, torch.float16, QuantFormat.INT4_GROUPWISE
    )
    assert "dequantized" in backend.support_note(Op.LINEAR, torch.float32, QuantFormat.INT8_ROWWISE)


@pytest.mark.skipif(
    not get_backend("ascend").availability().ok,
    reason=f"needs an Ascend NPU: {get_backend('ascend').availability().reason}",
)
@pytest.mark.parametrize(("bits", "group_size"), [(8, None), (8, 64), (4, None), (4, 64)])
def test_npu_weight_quant_matmul_matches_the_portable_linear(bits, group_size):
    backend = get_backend("ascend")
    ops = op_table_for(backend, torch.float16)
    weight = quantized(256, 512, bits, group_size)
    x = torch.randn(3, 512, generator=torch.Generator().manual_seed(6)).half()
    got = ops.prepare_quantized(weight)(x.to(backend.device())).cpu().float()
    expected = DequantizingLinear(weight)(x.float())
    assert nmse(got, expected) <= max_nmse(f"linear:{weight.format.value}", torch.float16)
