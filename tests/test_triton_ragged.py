"""Triton dequant-GEMM edges: masked lanes at ragged K and N, decode rows 1..4, and the split-K reduction.

``tl.load`` documents masked-out lanes as undefined unless ``other=`` is given; Triton's interpreter zeroes them,
which would hide a missing ``other=``. The ``undefined_masked_lanes`` fixture makes the interpreter fill them with NaN
(integers: 77) instead, so a masked lane that reaches a sum poisons the result. On a GPU the fixture does nothing
(the kernels are compiled) and the tests check the same numbers. Shapes and tiles are tiny: the interpreter is slow.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from bounds import max_nmse, nmse

from glm_engine.kernels.triton import interpreting, triton_verdict
from glm_engine.kernels.triton.configs import (
    DECODE_MAX_M,
    KernelConfig,
    Variant,
    choose_config,
    decode_values_per_thread,
)
from glm_engine.quant.weight import QuantizedWeight

needs_triton = pytest.mark.skipif(not triton_verdict()[0], reason=f"needs triton: {triton_verdict()[1]}")
POISON_INT = 77
# Registers a thread may hold: 255 on NVIDIA; AMD's 256 architectural VGPRs per lane. The budget leaves room for
# addresses, masks and loop state besides the tiles' values.
MAX_TILE_VALUES_PER_THREAD = 160


@pytest.fixture
def undefined_masked_lanes(monkeypatch):
    """Masked-out lanes of a load without ``other=`` come back as NaN (floats) or 77 (integers) in the interpreter."""
    if not interpreting():
        return
    from triton.runtime import interpreter

    builder = getattr(interpreter, "InterpreterBuilder", None)
    if builder is None or not hasattr(builder, "create_masked_load"):
        pytest.skip("this Triton's interpreter has no InterpreterBuilder.create_masked_load to stand in for")
    original = builder.create_masked_load

    def poisoned(self, ptrs, mask, other, *args):
        if other is None:
            element = ptrs.get_element_ty()
            np_dtype = interpreter._get_np_dtype(element)
            if element.is_bf16():
                fill = np.uint16(0x7FC0)  # bf16 NaN, stored as its bits
            elif np.issubdtype(np_dtype, np.floating):
                fill = np.nan
            else:
                fill = POISON_INT
            other = interpreter.TensorHandle(np.full(ptrs.data.shape, fill, dtype=np_dtype), element)
        return original(self, ptrs, mask, other, *args)

    monkeypatch.setattr(builder, "create_masked_load", poisoned)


def quantized(out: int, columns: int, bits: int, group_size: int | None = None, seed: int = 0) -> QuantizedWeight:
    weight = torch.randn(out, columns, generator=torch.Generator().manual_seed(seed)) * 0.05
    return QuantizedWeight.quantize(weight, bits, group_size)


def activations(
    m: int, columns: int, device: torch.device, dtype: torch.dtype = torch.float16, seed: int = 1
) -> torch.Tensor:
    return torch.randn(m, columns, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)


def run(x: torch.Tensor, weight: QuantizedWeight, config: KernelConfig) -> torch.Tensor:
    """The kernel on ``x``'s device (``kernel_device``: the GPU where there is one, else the interpreter's CPU)."""
    from glm_engine.kernels.triton.dequant_gemm import dequant_matmul

    return dequant_matmul(x, weight.stored.to(x.device), weight.scale.to(x.device), weight.bits, config)


def reference(x: torch.Tensor, weight: QuantizedWeight) -> torch.Tensor:
    return x.double().cpu() @ weight.dequantize(torch.float32).double().T


def tiny(variant: Variant, m: int, n: int, k: int, bits: int, **tiles: int) -> KernelConfig:
    base = choose_config(m, n, k, bits, None, variant=variant)
    small = (
        dict(block_n=16, block_k=32, split_k=1)
        if variant is Variant.DECODE
        else dict(block_m=16, block_n=16, block_k=32)
    )
    return replace(base, **{**small, **tiles})


@needs_triton
def test_the_stand_in_interpreter_poisons_masked_lanes_without_other(undefined_masked_lanes, kernel_device):
    """Without this the ragged tests below could not fail: a kernel that omits ``other=`` reads NaN."""
    if not interpreting():
        pytest.skip("compiled kernels: masked lanes are the hardware's, not the interpreter's")
    import triton
    import triton.language as tl

    @triton.jit
    def masked_sum(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(out_ptr, tl.sum(tl.load(x_ptr + offs, mask=offs < n).to(tl.float32), axis=0))

    out = torch.zeros(1, device=kernel_device)
    masked_sum[(1,)](torch.ones(8, dtype=torch.float16, device=kernel_device), out, 5, BLOCK=8)
    assert torch.isnan(out).all()
    masked_sum[(1,)](torch.ones(8, dtype=torch.int8, device=kernel_device), out, 5, BLOCK=8)
    assert out.item() == 5 + 3 * POISON_INT


@needs_triton
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("variant", list(Variant), ids=lambda v: v.value)
def test_ragged_k_and_n_read_no_masked_lane(undefined_masked_lanes, kernel_device, variant, bits):
    """K = 80 is two and a half 32-wide K blocks, N = 40 two and a half 16-wide column blocks, M = 3 rows of a
    4-row (decode) or 16-row (prefill) tile: every kind of edge, with masked lanes reading NaN."""
    m, n, k = 3, 40, 80
    weight = quantized(n, k, bits, seed=5)
    x = activations(m, k, kernel_device, seed=6)
    got = run(x, weight, tiny(variant, m, n, k, bits))
    assert got.shape == (m, n) and torch.isfinite(got).all()
    assert nmse(got.cpu(), reference(x, weight)) <= max_nmse(f"linear:{weight.format.value}", torch.float16)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("bits", [8, 4])
def test_decode_rows_one_to_four_each_get_what_one_row_alone_gets(undefined_masked_lanes, kernel_device, bits, dtype):
    """The decode kernel visits the rows of its tile one by one over the same dequantized weight tile: for M = 1..4
    every row's output is bit-identical to that row computed alone, and within the conformance bound."""
    n, k = 24, 96
    weight = quantized(n, k, bits, group_size=32, seed=7)
    x = activations(DECODE_MAX_M, k, kernel_device, dtype, seed=8)
    alone = [run(x[r : r + 1], weight, tiny(Variant.DECODE, 1, n, k, bits)) for r in range(DECODE_MAX_M)]
    for m in range(1, DECODE_MAX_M + 1):
        config = tiny(Variant.DECODE, m, n, k, bits)
        assert config.block_m == min(4, 1 << (m - 1).bit_length())
        got = run(x[:m], weight, config)
        for r in range(m):
            assert torch.equal(got[r], alone[r][0]), f"row {r} of {m}"
        assert nmse(got.cpu(), reference(x[:m], weight)) <= max_nmse(f"linear:{weight.format.value}", dtype)


@needs_triton
@pytest.mark.parametrize(("bits", "group_size"), [(8, None), (4, 32)])
def test_split_k_sums_in_kernel_to_the_unsplit_result_the_same_way_every_time(
    undefined_masked_lanes, kernel_device, bits, group_size
):
    """Six 32-wide K blocks in three splits of two (and a ragged last split of four blocks in two): the partials are
    added by one small launch in split order, so the result is the unsplit one up to fp32 rounding and identical
    from run to run."""
    m, n, k = 2, 24, 192
    weight = quantized(n, k, bits, group_size, seed=9)
    x = activations(m, k, kernel_device, seed=10)
    unsplit = run(x, weight, tiny(Variant.DECODE, m, n, k, bits, split_k=1))
    bound = max_nmse(f"linear:{weight.format.value}", torch.float16)
    for split_k in (3, 4):
        split = run(x, weight, tiny(Variant.DECODE, m, n, k, bits, split_k=split_k))
        assert split.dtype == torch.float16 and split.shape == (m, n)
        assert nmse(split.cpu(), unsplit.double().cpu()) <= bound
        assert nmse(split.cpu(), reference(x, weight)) <= bound
        assert torch.equal(split, run(x, weight, tiny(Variant.DECODE, m, n, k, bits, split_k=split_k)))


@pytest.mark.parametrize("platform", ["cuda", "hip"])
@pytest.mark.parametrize("bits", [8, 4])
def test_decode_registers_do_not_grow_with_rows(platform, bits):
    """From the tile shapes alone: four rows keep about the live values one row does, within a thread's registers."""
    warp = 64 if platform == "hip" else 32
    per_rows = [
        decode_values_per_thread(choose_config(m, 12288, 12288, bits, None, platform=platform), bits, warp)
        for m in range(1, DECODE_MAX_M + 1)
    ]
    assert max(per_rows) - min(per_rows) <= 4
    assert max(per_rows) <= MAX_TILE_VALUES_PER_THREAD
    one = choose_config(1, 12288, 12288, bits, None, platform=platform)
    broadcast = DECODE_MAX_M * one.block_n * one.block_k // (one.num_warps * warp)  # the old [M, N, K] product
    assert broadcast > max(per_rows)
