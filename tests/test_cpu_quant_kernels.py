"""The CPU backend's quantized linears (torch's weight-only int8/int4 kernels) against dequantize-then-matmul."""

from __future__ import annotations

import re

import pytest
import torch
from bounds import max_nmse, nmse

from glm_engine.backends.cpu import CpuBackend, quant_kernels
from glm_engine.backends.cpu.quant_linear import Int4Linear, Int8GroupwiseLinear, prepare_cpu_quantized
from glm_engine.backends.registry import op_table_for
from glm_engine.errors import BackendError
from glm_engine.ops.interface import Op
from glm_engine.ops.torch_ops import DequantizingLinear
from glm_engine.quant.formats import QuantFormat
from glm_engine.quant.weight import QuantizedWeight

# Every CPU path rounds activations, scales and outputs to bf16 (relative 2^-9 each): measured NMSE <= 2.2e-5
# against the exact product of the dequantized weight, for every format and dtype, within the conformance suite's
# ``linear:<format>`` bound (tests/bounds.py). A wrong scale, offset or packing order gives NMSE of order 1.
SCHEMES = [(8, None), (8, 32), (8, 64), (8, 128), (4, None), (4, 32), (4, 64), (4, 128)]
# (out, in): aligned, rows not a multiple of 16, in-features needing padding (rowwise only) and three int4 groups.
SHAPES = [(48, 256), (7, 128), (33, 100), (20, 384)]


def quantized(out: int, columns: int, bits: int, group_size: int | None, seed: int = 0) -> QuantizedWeight:
    w = torch.randn(out, columns, generator=torch.Generator().manual_seed(seed)) / columns**0.5
    return QuantizedWeight.quantize(w, bits, group_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("out", "columns", "bits", "group_size"),
    [(*shape, *scheme) for shape in SHAPES for scheme in SCHEMES if scheme[1] is None or shape[1] % scheme[1] == 0],
)
def test_every_kernel_path_matches_dequantize_then_fp64_matmul(out, columns, bits, group_size, dtype):
    q = quantized(out, columns, bits, group_size)
    packed = prepare_cpu_quantized(q)
    exact = q.dequantize(torch.float64)
    limit = max_nmse(f"linear:{q.format.value}", dtype)
    for rows in ((1, 1), (2, 5)):  # decode (one row) and prefill-sized batches
        x = torch.randn(*rows, columns, generator=torch.Generator().manual_seed(1)).to(dtype)
        got = packed(x)
        assert got.dtype == dtype and got.shape == (*rows, out)
        assert nmse(got, x.double() @ exact.T) <= limit


@pytest.mark.parametrize(("bits", "group_size"), SCHEMES)
@pytest.mark.parametrize("out", [48, 7])
def test_one_hot_inputs_recover_the_dequantized_columns_exactly(bits, group_size, out):
    """The packed layouts cannot be unpacked, so probe them: row k of ``I @ W.T`` is column k of W, which must be
    ``q * bf16(scale)`` rounded once to bf16 (what repacking, the int4 offset and the int8 halves must preserve)."""
    q = quantized(out, 128, bits, group_size, seed=2)
    step = q.scale.to(torch.bfloat16).float().repeat_interleave(q.group_size, dim=1)
    expected = (q.values().float() * step).to(torch.bfloat16)
    got = prepare_cpu_quantized(q)(torch.eye(128, dtype=torch.bfloat16))
    assert torch.equal(got.T, expected)


def test_int8_groupwise_halves_cover_the_full_int8_range():
    values = torch.arange(-128, 128, dtype=torch.int8).reshape(4, 64)  # -128 too, which foreign checkpoints may hold
    scales = torch.tensor([[0.5, 2.0]]).repeat(4, 1)  # two groups of 32 with different scales
    packed = prepare_cpu_quantized(QuantizedWeight.from_values(values, scales, 8))
    assert isinstance(packed, Int8GroupwiseLinear)
    expected = values.float() * scales.repeat_interleave(32, dim=1)
    assert torch.equal(packed(torch.eye(64, dtype=torch.bfloat16)).T, expected.bfloat16())


def test_quantized_linears_keep_the_packed_size():
    int4 = prepare_cpu_quantized(quantized(64, 256, 4, 64))
    int8 = prepare_cpu_quantized(quantized(64, 256, 8, None))
    assert isinstance(int4, Int4Linear)
    assert int4.nbytes == 64 * 128 + (256 // 64) * 64 * 2  # packed nibbles, one bf16 scale per group (no zero)
    assert int8.nbytes == 64 * 256 + 64 * 2


@pytest.mark.parametrize("bits", [4, 8])
def test_group_sizes_the_kernel_cannot_run_take_the_portable_path(bits):
    """Re-sharded TP-quantized checkpoints have groups of ``in / TP`` columns, e.g. 16 in tiny models."""
    q = quantized(16, 64, bits, 16)
    packed = prepare_cpu_quantized(q)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(4))
    assert isinstance(packed, DequantizingLinear)
    assert torch.equal(packed(x), x @ q.dequantize(torch.float32).T)
    with pytest.raises(BackendError, match="multiples of 32, got 16: quantize with --group-size 32, 64 or 128"):
        Int4Linear(q) if bits == 4 else Int8GroupwiseLinear(q)


def test_a_private_op_with_another_signature_names_the_torch_version(monkeypatch):
    quant_kernels.private_op.cache_clear()
    monkeypatch.setitem(quant_kernels._SCHEMAS, "_weight_int8pack_mm", "aten::_weight_int8pack_mm(Tensor self) -> T")
    monkeypatch.setitem(quant_kernels._SCHEMAS, "_no_such_kernel", "aten::_no_such_kernel(Tensor self) -> Tensor")
    try:
        with pytest.raises(
            BackendError, match=rf"torch {re.escape(torch.__version__)} does not provide .*found: aten::"
        ):
            quant_kernels.private_op("_weight_int8pack_mm")
        with pytest.raises(BackendError, match="found: missing"):
            quant_kernels.private_op("_no_such_kernel")
    finally:
        quant_kernels.private_op.cache_clear()


def test_cpu_backend_declares_every_format_and_how_it_runs(monkeypatch):
    monkeypatch.delenv("GLM_ENGINE_CPU_INT_DOT", raising=False)
    cpu = CpuBackend()
    assert set(cpu.quant_formats()) == set(QuantFormat)
    fp32 = cpu.supports(Op.LINEAR, torch.float32, "int4-groupwise")
    assert fp32.ok and "_weight_int4pack_mm_for_cpu" in fp32.reason and "rounded to bf16" in fp32.reason
    bf16 = cpu.supports(Op.LINEAR, torch.bfloat16, "int8-rowwise")
    assert bf16.ok and "_weight_int8pack_mm" in bf16.reason and "rounded" not in bf16.reason
    monkeypatch.setenv("GLM_ENGINE_CPU_INT_DOT", "1")  # opted in: INT4 and INT8 groupwise name the other kernel
    assert "integer dot-product kernel" in cpu.supports(Op.LINEAR, torch.float32, "int4-rowwise").reason
    assert "_weight_int8pack_mm" in cpu.supports(Op.LINEAR, torch.float32, "int8-rowwise").reason


def test_the_cpu_op_table_uses_the_kernels_and_adds_the_bias():
    ops = op_table_for(CpuBackend(), torch.bfloat16)
    q = quantized(16, 64, 4, 32)
    packed = ops.prepare_quantized(q)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(3)).bfloat16()
    bias = torch.randn(16).bfloat16()
    assert isinstance(packed, Int4Linear)
    assert torch.equal(ops.linear(x, packed, bias), packed(x) + bias)


def test_int4_layers_share_one_operand_buffer_without_mixing_their_scales():
    """INT4 layers keep only their scales; the kernel's (scale, zero) operand is written into one buffer per thread
    before each product, so layers of different sizes called in turn must each get their own scales and zeros of 0."""
    big, small = quantized(64, 512, 4, 32, seed=7), quantized(16, 128, 4, None, seed=8)
    layers = [prepare_cpu_quantized(big, "torch"), prepare_cpu_quantized(small, "torch")]
    x = [torch.randn(2, w.in_features, generator=torch.Generator().manual_seed(9)).bfloat16() for w in (big, small)]
    alone = [layer(rows) for layer, rows in zip(layers, x)]
    for _ in range(2):
        for layer, rows, expected in zip(layers, x, alone):
            assert torch.equal(layer(rows), expected)
    operand = layers[0].scales_and_zeros()
    assert torch.equal(operand[..., 0], layers[0].scales) and not operand[..., 1].any()


def test_the_shared_operand_buffer_works_inside_and_outside_inference_mode():
    """The buffer may first be needed under torch.inference_mode() (the engine's) and later outside it (tests, the
    conformance suite), or the other way round."""
    quant_kernels._OPERAND.words = None
    layer = prepare_cpu_quantized(quantized(16, 128, 4, 32, seed=10), "torch")
    x = torch.randn(1, 128, generator=torch.Generator().manual_seed(11)).bfloat16()
    with torch.inference_mode():
        inside = layer(x)
    assert torch.equal(layer(x), inside)
    with torch.inference_mode():
        assert torch.equal(layer(x), inside)
