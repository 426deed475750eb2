"""The Triton dequant-GEMM kernels on their own: correctness at the real tiles, then speed next to the fp16 GEMM.

``glm-engine bench`` times whole models; this times one quantized product, the piece whose tiles
(``kernels/triton/configs.py``) are rules to confirm on each GPU. Two parts:

- ``check_kernels``: every kernel variant (decode, prefill) x format x activation dtype x row count, forced past the
  per-call choice, against the float64 product of the dequantized weight. NMSE as the conformance suite computes it,
  bounded by its ``linear:<format>`` row (``conformance/thresholds.py``), so a kernel passes here exactly when it
  would pass there.
- ``time_kernels``: per shape (out x in) and row count, the median time of fp16 ``F.linear`` (cuBLAS/hipBLASLt) and of
  each quantized format through ``TritonQuantLinear`` (the kernel the engine would pick), timed by the bench's device
  timer (events on accelerators), with the weight bytes streamed per second (``roofline.achieved_gbps``) and the
  speed-up over fp16. At one row a product is bound by the weight's bytes, so that GB/s is the number to hold against
  the device's read bandwidth (``roofline.measure_read_bandwidth``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glm_engine.bench import stats
from glm_engine.bench.device import Timer
from glm_engine.bench.roofline import achieved_gbps
from glm_engine.conformance.oracle import nmse
from glm_engine.conformance.thresholds import threshold_for
from glm_engine.kernels.triton.configs import Variant, choose_config
from glm_engine.quant.weight import QuantizedWeight

# (out, in): GLM-130B's hidden and GeGLU widths; ChatGLM2/3 and GLM-4's fused QKV (32 query heads of 128 over 2
# key/value groups), SwiGLU gate-up and down projections.
SHAPES = ((12288, 12288), (32768, 12288), (12288, 32768), (4608, 4096), (27392, 4096), (4096, 13696))
FORMATS = ((8, None), (4, None), (8, 128), (4, 128), (4, 64), (4, 32))  # (bits, group size; None = rowwise)
CHECK_SHAPE = (384, 1024)  # (out, in): several tiles of every variant at the real tile sizes
CHECK_ROWS = (1, 3, 17, 128)  # decode (M <= 4) and prefill row counts, ragged and tile-sized
ACTIVATION_DTYPES = (torch.float16, torch.bfloat16)
WEIGHT_STD = 0.05


def format_name(bits: int, group_size: int | None) -> str:
    return f"int{bits}-" + (f"g{group_size}" if group_size else "row")


@dataclass(frozen=True)
class KernelCheck:
    """One forced kernel call against the float64 product: NMSE, its bound, and whether the output is finite."""

    name: str
    rows: int
    nmse: float
    bound: float
    finite: bool

    @property
    def ok(self) -> bool:
        return self.finite and self.nmse <= self.bound


def check_kernels(
    device: torch.device,
    formats: Sequence[tuple[int, int | None]] = FORMATS,
    dtypes: Sequence[torch.dtype] = ACTIVATION_DTYPES,
    rows: Sequence[int] = CHECK_ROWS,
    shape: tuple[int, int] = CHECK_SHAPE,
    seed: int = 0,
) -> list[KernelCheck]:
    """Every variant x format x dtype x row count at ``shape`` (see the module docstring)."""
    from glm_engine.kernels.triton.dequant_gemm import dequant_matmul

    out_features, in_features = shape
    platform = "hip" if torch.version.hip else "cuda"  # the tiles the engine would compile for here
    generator = torch.Generator().manual_seed(seed)
    checks = []
    for bits, group_size in formats:
        weight = torch.randn(out_features, in_features, generator=generator) * WEIGHT_STD
        quantized = QuantizedWeight.quantize(weight, bits, group_size).to(device)
        exact = quantized.dequantize(torch.float32).double().cpu()
        for dtype in dtypes:
            bound = threshold_for(f"linear:{quantized.format.value}", dtype).max_nmse
            for m in rows:
                x = torch.randn(m, in_features, generator=generator).to(dtype)
                reference = x.double() @ exact.T
                for variant in Variant:
                    config = choose_config(
                        m, out_features, in_features, bits, group_size, platform=platform, variant=variant
                    )
                    got = dequant_matmul(x.to(device), quantized.stored, quantized.scale, bits, config).cpu()
                    name = f"{format_name(bits, group_size)} {str(dtype)[6:]} M={m} {variant.value}"
                    finite = bool(torch.isfinite(got).all())
                    checks.append(KernelCheck(name, m, nmse([got], [reference]), bound, finite))
    return checks


@dataclass(frozen=True)
class KernelTiming:
    """The median time of one product, the bytes of weight it streams per second, and its speed-up over fp16."""

    shape: tuple[int, int]
    rows: int
    format: str  # "fp16" for the dense product
    seconds: float
    weight_gbps: float
    vs_fp16: float
    kernel: str


def median_seconds(run: Callable[[], object], timer: Timer, repetitions: int, warmup: int) -> float:
    """Median of ``repetitions`` timed calls of ``run`` after ``warmup`` untimed ones (compilation, autotuning)."""
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repetitions):
        timer.start()
        run()
        samples.append(timer.stop())
    return stats.median(samples)


def time_kernels(
    device: torch.device,
    shapes: Sequence[tuple[int, int]] = SHAPES,
    rows: Sequence[int] = (1, 128),
    formats: Sequence[tuple[int, int | None]] = FORMATS,
    repetitions: int = 20,
    warmup: int = 3,
) -> list[KernelTiming]:
    """fp16 ``F.linear`` and every quantized format at every shape and row count (see the module docstring)."""
    from glm_engine.kernels.triton.linear import TritonQuantLinear

    timer = Timer(device)
    timings = []
    for out_features, in_features in shapes:
        dense = (torch.randn(out_features, in_features, device=device) * WEIGHT_STD).half()
        dense_bytes = dense.numel() * dense.element_size()
        linears = {
            format_name(bits, group): TritonQuantLinear(QuantizedWeight.quantize(dense.float(), bits, group))
            for bits, group in formats
        }
        for m in rows:
            x = torch.randn(m, in_features, device=device).half()
            base = median_seconds(lambda x=x, dense=dense: F.linear(x, dense), timer, repetitions, warmup)
            shape = (out_features, in_features)
            timings.append(KernelTiming(shape, m, "fp16", base, achieved_gbps(dense_bytes, base), 1.0, "F.linear"))
            for name, linear in linears.items():
                seconds = median_seconds(lambda x=x, linear=linear: linear(x), timer, repetitions, warmup)
                config = choose_config(
                    m,
                    out_features,
                    in_features,
                    linear.bits,
                    linear.group_size,
                    sm_count=linear.sm_count,
                    platform=linear.platform,
                )
                kernel = f"{config.variant.value} bm{config.block_m} bn{config.block_n} bk{config.block_k}"
                kernel += f" split{config.split_k}" if config.variant is Variant.DECODE else ""
                gbps = achieved_gbps(linear.nbytes, seconds)
                timings.append(KernelTiming(shape, m, name, seconds, gbps, base / seconds, kernel))
        del dense, linears
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return timings
