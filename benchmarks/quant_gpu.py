"""Triton dequant-GEMM on a GPU: correctness at real tiles, then decode/prefill speed next to the fp16 GEMM.

One prepared pass for a short GPU session (``benchmarks/gpu_check.sh`` runs it):

1. Checks: every kernel variant x format (INT8/INT4, rowwise and groups of 32/64/128) x dtype (fp16/bf16) at
   M in {1, 3, 17, 128} against dequantize-then-fp32-matmul, NMSE per case, with the configs the engine picks.
2. Speed: for each shape (out x in) and M, the median time of the fp16 ``F.linear`` (cuBLAS) and of each quantized
   kernel, the weight bytes streamed per second (GB/s: stored bytes incl. scales / time) and the speed-up over fp16.
   Decode (M=1) is bound by weight bandwidth, so GB/s there is the figure to compare with the device's peak
   (H100 SXM: 3.35 TB/s; H100 PCIe: 2.0 TB/s).

Prints two compact tables; exits 1 when a check fails. Without a GPU it says so and exits 0 after parsing options
(``--dry-run`` lists what it would run).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F

from glm_engine.kernels.triton.configs import Variant, choose_config
from glm_engine.quant.weight import QuantizedWeight

SHAPES = ((12288, 12288), (32768, 12288), (12288, 32768))  # (out, in): GLM-130B's hidden and GeGLU widths
FORMATS = ((8, None), (4, None), (8, 128), (4, 128), (4, 64), (4, 32))
CHECK_NMSE = {torch.float16: 1e-6, torch.bfloat16: 2e-5}  # output rounding dominates: 2^-11 / 2^-8 relative


def fmt_name(bits: int, group_size: int | None) -> str:
    return f"int{bits}-" + (f"g{group_size}" if group_size else "row")


def run_checks(device: torch.device) -> list[str]:
    """NMSE of every kernel/format/dtype/M against the float64 product; returns the failures."""
    from glm_engine.kernels.triton.dequant_gemm import dequant_matmul

    failures = []
    generator = torch.Generator().manual_seed(0)
    print(f"{'check':<34} {'nmse':>9}")
    for bits, group_size in FORMATS:
        weight = QuantizedWeight.quantize(torch.randn(384, 1024, generator=generator) * 0.05, bits, group_size)
        weight = weight.to(device)
        reference_weight = weight.dequantize(torch.float32).double()
        for dtype in (torch.float16, torch.bfloat16):
            for m in (1, 3, 17, 128):
                x = torch.randn(m, 1024, generator=generator).to(dtype).to(device)
                reference = x.double() @ reference_weight.T
                for variant in Variant:
                    config = choose_config(m, 384, 1024, bits, group_size, variant=variant)
                    got = dequant_matmul(x, weight.stored, weight.scale, bits, config).double()
                    nmse = float(((got - reference) ** 2).sum() / (reference**2).sum())
                    name = f"{fmt_name(bits, group_size)} {str(dtype)[6:]} M={m} {variant.value}"
                    ok = nmse <= CHECK_NMSE[dtype] and torch.isfinite(got).all()
                    if not ok or m in (1, 128):
                        print(f"{name:<34} {nmse:9.2e}{'' if ok else '  FAIL'}")
                    if not ok:
                        failures.append(name)
    return failures


def median_ms(fn, repeats: int) -> float:
    """Median of ``repeats`` timed calls (CUDA events), after warm-up (compilation)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run_speed(device: torch.device, ms: tuple[int, ...], repeats: int) -> None:
    from glm_engine.kernels.triton.linear import TritonQuantLinear

    print(f"\n{'shape (out x in)':<18} {'M':>4} {'format':<10} {'ms':>8} {'GB/s':>7} {'x fp16':>7} kernel")
    for out_features, in_features in SHAPES:
        dense = (torch.randn(out_features, in_features, device=device) * 0.02).half()
        for m in ms:
            x = torch.randn(m, in_features, device=device).half()
            base = median_ms(lambda x=x, dense=dense: F.linear(x, dense), repeats)
            shape = f"{out_features}x{in_features}"
            print(
                f"{shape:<18} {m:>4} {'fp16':<10} {base:8.3f} {dense.numel() * 2 / base / 1e6:7.0f} {1.0:7.2f} cuBLAS"
            )
            for bits, group_size in FORMATS:
                weight = QuantizedWeight.quantize(dense.float(), bits, group_size)
                linear = TritonQuantLinear(weight)
                t = median_ms(lambda linear=linear, x=x: linear(x), repeats)
                config = choose_config(m, out_features, in_features, bits, group_size, sm_count=linear.sm_count)
                kernel = f"{config.variant.value} bm{config.block_m} bn{config.block_n} bk{config.block_k}"
                kernel += f" split{config.split_k}" if config.variant is Variant.DECODE else ""
                gbps = linear.nbytes / t / 1e6
                print(
                    f"{shape:<18} {m:>4} {fmt_name(bits, group_size):<10} {t:8.3f} {gbps:7.0f} {base / t:7.2f} {kernel}"
                )
        torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--m", default="1,128", help="rows of x to time, comma-separated (default 1,128)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="list the checks and shapes, run nothing")
    args = parser.parse_args()
    ms = tuple(int(v) for v in args.m.split(","))
    if args.dry_run or not torch.cuda.is_available():
        why = "dry run" if args.dry_run else "no GPU visible (torch.cuda.is_available() is False)"
        print(f"{why}: would check {len(FORMATS)} formats x 2 dtypes x 4 M x 2 kernels, then time {SHAPES} at M={ms}")
        return 0
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, HIP {torch.version.hip or '-'}")
    failures = run_checks(device)
    if not args.skip_speed:
        run_speed(device, ms, args.repeats)
    print(f"\n{len(failures)} failed checks" + (": " + ", ".join(failures) if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
