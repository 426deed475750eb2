"""Step 3: every dequant-GEMM format, both kernels, at ragged K and N and the row counts decode and prefill see.

``bench.dequant_gemm.check_kernels`` forces each kernel variant (decode, prefill) past the per-call choice and
compares it with the float64 product of the dequantized weight under the conformance suite's ``linear:<format>``
bound. Shapes are ragged against every tile: N = 1000 columns (no block of 16..128 divides it) and, for rowwise
weights, K = 1000 (a partial last K block); groupwise weights need K a multiple of the group, so K = 1152 = 9 x 128.
M = 1, 3, 4 (decode: one sequence, beams, batch), 17 and 128 (prefill), most important first. One row per M and
format: the worst of the two kernels and two dtypes, as a fraction of the bound; failing cases are listed after.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from tools.device_check.common import FAILED, PASSED, LiveTable, arguments, skipped, summary, triton_device

ROWS = (1, 4, 128, 17, 3)  # most important first: a step cut at its limit has decode and prefill at every format
# bench's formats and INT8 at the smaller groups too (INT8 groups need 16 columns per dot, INT4 32).
FORMATS = ((8, None), (4, None), (8, 128), (8, 64), (8, 32), (4, 128), (4, 64), (4, 32))
RAGGED_N = 1000
RAGGED_K = {"rowwise": 1000, "groupwise": 1152}
# --cpu: Triton's interpreter at a size it gets through in seconds, still ragged (N = 40, K = 96 or 128).
CPU_ROWS = (1, 4, 17)
CPU_SHAPES = {"rowwise": (40, 96), "groupwise": (40, 128)}


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.split("\n")[0], argv)
    device = triton_device(args)
    if isinstance(device, str):
        return skipped(device)
    from glm_engine.bench.dequant_gemm import check_kernels, format_name

    rows = CPU_ROWS if args.cpu else ROWS
    dtypes = (torch.float16,) if args.cpu else (torch.float16, torch.bfloat16)
    live = LiveTable(["format", "N x K", "M", "worst nmse", "bound", "of bound", "cases", "result"])
    failures = []
    for m in rows:
        for bits, group in FORMATS:
            kind = "groupwise" if group else "rowwise"
            shape = CPU_SHAPES[kind] if args.cpu else (RAGGED_N, RAGGED_K[kind])
            checks = check_kernels(device, formats=[(bits, group)], dtypes=dtypes, rows=[m], shape=shape)
            worst = max(checks, key=lambda c: c.nmse / c.bound if c.finite else float("inf"))
            failures += [c.name for c in checks if not c.ok]
            verdict = "ok" if all(c.ok for c in checks) else "FAIL"
            fraction = worst.nmse / worst.bound if worst.finite else float("inf")
            live.add(
                [
                    format_name(bits, group),
                    f"{shape[0]}x{shape[1]}",
                    m,
                    worst.nmse,
                    worst.bound,
                    fraction,
                    len(checks),
                    verdict,
                ]
            )
    for name in failures:
        print(f"FAIL {name}")
    summary(
        f"{len(live.rows)} format x M rows, {len(failures)} failing cases"
        + (f": {', '.join(failures[:6])}" if failures else "")
    )
    return FAILED if failures else PASSED


if __name__ == "__main__":
    sys.exit(main())
