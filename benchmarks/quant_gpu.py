"""Triton dequant-GEMM on a GPU: correctness at real tiles, then decode/prefill speed next to the fp16 GEMM.

A longer pass than the device check's (``tools/device_check.sh`` checks the kernels at ragged shapes), printing what
``glm_engine.bench.dequant_gemm`` measures:

1. Checks: every kernel variant x format (INT8/INT4, rowwise and groups of 32/64/128) x dtype (fp16/bf16) at
   M in {1, 3, 17, 128} against the float64 product of the dequantized weight, bounded by the conformance table's
   ``linear:<format>`` rows. Printed for M = 1 and 128, and every failure.
2. Speed: per shape (out x in) and M, the median time of fp16 ``F.linear`` and of each quantized kernel, the weight
   bytes streamed per second and the speed-up over fp16, below the device's read bandwidth as ``glm-engine bench``
   measures it (M=1 is bound by the weight's bytes: that GB/s is the one to hold against it).

Exits 1 when a check fails. Without a GPU it says so and exits 0 (``--dry-run`` lists what it would run).
Run: ``python benchmarks/quant_gpu.py [--m 1,128] [--repeats 20] [--skip-speed]``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from glm_engine.bench.dequant_gemm import FORMATS, SHAPES, check_kernels, format_name, time_kernels
from glm_engine.bench.roofline import measure_read_bandwidth

SHOWN_ROWS = (1, 128)  # checks printed even when they pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--m", default="1,128", help="rows of x to time, comma-separated (default 1,128)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--bandwidth-gib", type=float, default=1.0, help="least GiB the bandwidth probe reads; 0 skips")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="list the checks and shapes, run nothing")
    args = parser.parse_args()
    ms = tuple(int(v) for v in args.m.split(","))
    if args.dry_run or not torch.cuda.is_available():
        why = "dry run" if args.dry_run else "no GPU visible (torch.cuda.is_available() is False)"
        formats = ", ".join(format_name(*f) for f in FORMATS)
        print(f"{why}: would check {formats} x fp16/bf16 x M 1,3,17,128 x 2 kernels, then time {SHAPES} at M={ms}")
        return 0
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, HIP {torch.version.hip or '-'}")
    checks = check_kernels(device)
    print(f"{'check':<34} {'nmse':>9} {'bound':>9}")
    for check in checks:
        if not check.ok or check.rows in SHOWN_ROWS:
            print(f"{check.name:<34} {check.nmse:9.2e} {check.bound:9.0e}{'' if check.ok else '  FAIL'}")
    if not args.skip_speed:
        if args.bandwidth_gib > 0:
            bandwidth = measure_read_bandwidth(device, args.bandwidth_gib, ("fp16",))
            print(f"\nmeasured read bandwidth {bandwidth.gbps:.0f} GB/s ({bandwidth.kernel})")
        print(f"\n{'shape (out x in)':<18} {'M':>4} {'format':<10} {'ms':>8} {'GB/s':>7} {'x fp16':>7} kernel")
        for t in time_kernels(device, rows=ms, repetitions=args.repeats):
            shape = f"{t.shape[0]}x{t.shape[1]}"
            print(
                f"{shape:<18} {t.rows:>4} {t.format:<10} {t.seconds * 1e3:8.3f} {t.weight_gbps:7.0f} "
                f"{t.vs_fp16:7.2f} {t.kernel}"
            )
    failures = [c.name for c in checks if not c.ok]
    print(f"\n{len(failures)} failed checks" + (": " + ", ".join(failures) if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
