"""``glm_engine.bench.dequant_gemm`` (``benchmarks/quant_gpu.py``): its checks hold the kernels to the conformance
bounds and catch a wrong kernel; its timings cover fp16 and every format. Without a GPU the kernels run in Triton's
interpreter (conftest.py) at small shapes, on the GPU where there is one (the ``kernel_device`` fixture)."""

from __future__ import annotations

import pytest
import torch

from glm_engine.bench.dequant_gemm import check_kernels, time_kernels
from glm_engine.conformance.thresholds import threshold_for
from glm_engine.kernels.triton import triton_verdict

pytestmark = pytest.mark.skipif(not triton_verdict()[0], reason=f"needs triton: {triton_verdict()[1]}")
SMALL = dict(formats=[(4, 32), (8, None)], dtypes=[torch.float16], rows=[1, 17], shape=(128, 256))


def test_every_variant_passes_within_the_conformance_bound(kernel_device):
    checks = check_kernels(kernel_device, **SMALL)
    assert len(checks) == 2 * 2 * 2  # formats x rows x (decode, prefill)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert {c.bound for c in checks} == {threshold_for("linear:int4-groupwise", torch.float16).max_nmse}


def test_a_kernel_with_a_scale_two_percent_off_fails_the_check(monkeypatch, kernel_device):
    from glm_engine.kernels.triton import dequant_gemm

    real = dequant_gemm.dequant_matmul
    monkeypatch.setattr(dequant_gemm, "dequant_matmul", lambda *args: real(*args) * 1.02)
    checks = check_kernels(kernel_device, **SMALL)
    assert not any(c.ok for c in checks) and all(c.nmse > c.bound for c in checks)


def test_timings_cover_the_dense_product_and_each_format(kernel_device):
    timings = time_kernels(kernel_device, shapes=[(64, 128)], rows=[1], formats=[(4, 32)], repetitions=2, warmup=1)
    assert [t.format for t in timings] == ["fp16", "int4-g32"]
    assert all(t.seconds > 0 and t.weight_gbps > 0 for t in timings)
    assert timings[0].vs_fp16 == 1.0 and timings[1].kernel.startswith("decode")
