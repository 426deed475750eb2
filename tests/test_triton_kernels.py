"""Triton dequant-GEMM kernels against dequantize-then-fp32-matmul, config choice, and the cuda op table's choice.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest.py), on CPU tensors;
with one they are compiled and read tensors on the GPU (the ``kernel_device`` fixture). Both run them at tiny shapes
with tiny tiles so that several programs, K splits and ragged edges are exercised. Without triton the kernel tests
skip with the reason; config and fallback tests run everywhere.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from bounds import max_nmse
from bounds import nmse as suite_nmse

from glm_engine.backends.cuda.ops import CudaOps
from glm_engine.backends.registry import get_backend
from glm_engine.errors import BackendError
from glm_engine.kernels.triton import triton_verdict
from glm_engine.kernels.triton.configs import (
    DECODE_MAX_M,
    KernelConfig,
    Variant,
    check_config,
    choose_config,
    unsupported_reason,
)
from glm_engine.ops.interface import Op
from glm_engine.ops.torch_ops import DequantizingLinear
from glm_engine.quant.weight import QuantizedWeight

needs_triton = pytest.mark.skipif(not triton_verdict()[0], reason=f"needs triton: {triton_verdict()[1]}")

# NMSE of the kernels' output against float64 products of the same inputs and dequantized weights, bounded by the
# conformance suite's ``linear:<format>`` rows (tests/bounds.py). A wrong scale group, nibble order or mask gives NMSE
# of order 1.

# Tiles small enough that the test shapes span several programs and K blocks (the real tiles are in configs.py).
SMALL_TILES = {
    Variant.DECODE: dict(block_n=16, block_k=32, split_k=2),
    Variant.PREFILL: dict(block_m=16, block_n=16, block_k=32, group_m=2),
}


def quantized(out: int, columns: int, bits: int, group_size: int | None, seed: int = 0) -> QuantizedWeight:
    weight = torch.randn(out, columns, generator=torch.Generator().manual_seed(seed)) * 0.05
    return QuantizedWeight.quantize(weight, bits, group_size)


def activations(m: int, columns: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    return torch.randn(m, columns, generator=torch.Generator().manual_seed(seed)).to(dtype)


def nmse(got: torch.Tensor, x: torch.Tensor, weight: QuantizedWeight) -> float:
    return suite_nmse(got, x.double() @ weight.dequantize(torch.float32).double().T)


def bound(weight: QuantizedWeight, dtype: torch.dtype) -> float:
    return max_nmse(f"linear:{weight.format.value}", dtype)


def small_config(variant: Variant, m: int, n: int, k: int, bits: int, group_size: int | None) -> KernelConfig:
    config = replace(choose_config(m, n, k, bits, group_size, variant=variant), **SMALL_TILES[variant])
    return replace(config, block_k=min(config.block_k, group_size or config.block_k))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize(("bits", "group_size"), [(8, None), (8, 32), (8, 64), (4, None), (4, 32), (4, 64), (4, 128)])
@pytest.mark.parametrize("variant", list(Variant), ids=lambda v: v.value)
def test_kernel_matches_dequantize_then_matmul(variant, bits, group_size, m, dtype, kernel_device):
    from glm_engine.kernels.triton.dequant_gemm import dequant_matmul

    n, k = (48, 128) if m != 3 else (32, 128 if (group_size or 0) >= 64 else 64)
    weight = quantized(n, k, bits, group_size)
    x = activations(m, k, dtype)
    on = weight.to(kernel_device)
    config = small_config(variant, m, n, k, bits, group_size)
    got = dequant_matmul(x.to(kernel_device), on.stored, on.scale, bits, config).cpu()
    assert got.dtype == dtype and got.shape == (m, n)
    assert torch.isfinite(got).all()
    assert nmse(got, x, weight) <= bound(weight, dtype)


@needs_triton
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("variant", list(Variant), ids=lambda v: v.value)
def test_rowwise_kernel_handles_a_ragged_last_k_block(variant, bits, kernel_device):
    from glm_engine.kernels.triton.dequant_gemm import dequant_matmul

    weight = quantized(24, 96, bits, None, seed=3)  # 96 = one full 64-wide K block and half of another
    x = activations(5, 96, torch.float16, seed=4)
    config = replace(small_config(variant, 5, 24, 96, bits, None), block_k=64)
    on = weight.to(kernel_device)
    got = dequant_matmul(x.to(kernel_device), on.stored, on.scale, bits, config).cpu()
    assert nmse(got, x, weight) <= bound(weight, torch.float16)


@needs_triton
def test_int4_nibble_order_matters(kernel_device):
    """The even column is in the high nibble: the same bytes read with swapped nibbles give a different product."""
    from glm_engine.kernels.triton.dequant_gemm import dequant_matmul

    weight = quantized(32, 64, 4, 32)
    swapped = QuantizedWeight(((weight.stored << 4) | ((weight.stored >> 4) & 0x0F)).to(torch.int8), weight.scale, 4)
    x = activations(2, 64, torch.float16)
    config = small_config(Variant.DECODE, 2, 32, 64, 4, 32)

    def product(w: QuantizedWeight) -> torch.Tensor:
        on = w.to(kernel_device)
        return dequant_matmul(x.to(kernel_device), on.stored, on.scale, 4, config).cpu()

    assert nmse(product(weight), x, weight) <= bound(weight, torch.float16)
    assert nmse(product(swapped), x, weight) > 0.1


@needs_triton
@pytest.mark.parametrize("m", [2, 9])
def test_cuda_op_table_runs_quantized_linears_through_triton(m, kernel_device):
    """CudaOps on the kernel device (CPU tensors in the interpreter): batch-shaped inputs, the kernel picked by M, then
    the bias."""
    ops = CudaOps(kernel_device, torch.float16)
    weight = quantized(32, 64, 4, 32)
    packed = ops.prepare_quantized(weight)
    assert type(packed).__name__ == "TritonQuantLinear" and ops.quant_path["int4-groupwise"].startswith("fused")
    assert packed.nbytes == weight.nbytes
    x = activations(m, 64, torch.float16).view(1, m, 64)
    bias = torch.randn(32).half()
    got = ops.linear(x.to(kernel_device), packed, bias.to(kernel_device)).cpu()
    expected = DequantizingLinear(weight)(x.float()) + bias.float()
    assert got.shape == (1, m, 32) and got.dtype == torch.float16
    assert suite_nmse(got, expected) <= bound(weight, torch.float16)


def test_cuda_op_table_falls_back_with_a_reason(monkeypatch):
    """fp32 activations, groups the kernels cannot tile, or no triton: the portable linear, and the table says why."""
    ops = CudaOps(torch.device("cpu"), torch.float32)
    assert isinstance(ops.prepare_quantized(quantized(16, 64, 8, None)), DequantizingLinear)
    assert "fp16/bf16 activations" in ops.quant_path["int8-rowwise"]
    if triton_verdict()[0]:
        half = CudaOps(torch.device("cpu"), torch.float16)
        assert isinstance(half.prepare_quantized(quantized(16, 96, 4, 48)), DequantizingLinear)
        assert "multiple of 32" in half.quant_path["int4-groupwise"]
    monkeypatch.setattr(
        "glm_engine.kernels.triton.linear.triton_verdict", lambda: (False, "triton is not installed (test)")
    )
    half = CudaOps(torch.device("cpu"), torch.float16)
    assert isinstance(half.prepare_quantized(quantized(16, 64, 4, 32)), DequantizingLinear)
    assert half.quant_path["int4-groupwise"] == "dequantize per product: triton is not installed (test)"


def test_cuda_backends_say_how_quantized_linears_run():
    for name in ("cuda", "rocm_dcu"):
        backend = get_backend(name)
        assert set(backend.quant_formats()) == {"int8-rowwise", "int4-rowwise", "int8-groupwise", "int4-groupwise"}
        note = backend.support_note(Op.LINEAR, torch.float16, backend.quant_formats()[1])
        assert ("fused Triton" in note) == triton_verdict()[0]
        assert "dequantized" in backend.support_note(Op.LINEAR, torch.float32, backend.quant_formats()[1])


def test_config_choice_decode_for_few_rows_prefill_for_many():
    assert choose_config(1, 12288, 12288, 4, None).variant is Variant.DECODE
    assert choose_config(DECODE_MAX_M, 12288, 12288, 8, None).variant is Variant.DECODE
    assert choose_config(DECODE_MAX_M + 1, 12288, 12288, 8, None).variant is Variant.PREFILL
    prefill = choose_config(128, 12288, 12288, 4, 32)
    assert prefill.block_k == 32 and prefill.block_m == 128  # block_k shrinks to the group, tiles grow with M
    assert choose_config(17, 12288, 12288, 8, None).block_m == 64


def test_decode_splits_k_only_when_the_output_gives_too_few_programs():
    wide = choose_config(1, 32768, 12288, 8, None, sm_count=132)  # 512 column blocks already fill 132 SMs twice
    narrow = choose_config(1, 4096, 12288, 8, None, sm_count=132)  # 64 column blocks: split K to reach 264 programs
    assert wide.split_k == 1
    assert narrow.split_k == 5 and 64 * narrow.split_k >= 2 * 132
    assert choose_config(1, 64, 128, 8, None, sm_count=132).split_k == 1  # never more splits than K blocks
    assert choose_config(3, 4096, 4096, 4, None).block_m == 4


def test_unsupported_groups_and_bad_tiles_are_named():
    assert unsupported_reason(8, 4096, None) == "" and unsupported_reason(4, 4096, 32) == ""
    assert "multiple of 32" in unsupported_reason(4, 4096, 48)
    assert unsupported_reason(8, 4096, 48) == ""  # INT8 groups need 16 columns per dot
    with pytest.raises(ValueError, match="power of two"):
        check_config(KernelConfig(Variant.DECODE, 1, 48, 64), 8, None)
    with pytest.raises(ValueError, match="divide the group size"):
        check_config(KernelConfig(Variant.DECODE, 1, 64, 64), 8, 32)
    with pytest.raises(ValueError, match="at least 16"):
        check_config(KernelConfig(Variant.PREFILL, 16, 16, 16), 4, None)


@needs_triton
def test_triton_linear_refuses_what_it_cannot_run(kernel_device):
    from glm_engine.kernels.triton.linear import TritonQuantLinear

    with pytest.raises(BackendError, match="multiple of 32"):
        TritonQuantLinear(quantized(16, 96, 4, 48).to(kernel_device))
    with pytest.raises(BackendError, match="fp16/bf16"):
        TritonQuantLinear(quantized(16, 64, 8, None).to(kernel_device))(torch.zeros(1, 64, device=kernel_device))
