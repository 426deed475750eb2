"""Step 7: decode GB/s of one 12288-wide layer in fp16, INT8 and INT4 at M = 1 and 4, against the HBM roofline.

``bench.dequant_gemm.time_kernels`` times fp16 ``F.linear`` and the Triton dequant-GEMM (the kernel the engine picks,
``TritonQuantLinear``) on GLM-130B's 12288 x 12288 projection, and counts the weight bytes each streams per second
(``bench.roofline.achieved_gbps``). At M = 1 a decode product is bound by those bytes; M = 4 (beams, a small batch)
should cost about what M = 1 does, so its GB/s should be close. The columns hold that rate against the HBM peak of
the GPU's spec sheet (known for H100 SXM and H200 by the device's name, else "unknown") and against the read bandwidth
``bench.roofline.measure_read_bandwidth`` measures here (the practical ceiling). With ``--cpu`` a small layer runs in
Triton's interpreter and only the harness is exercised (no bandwidth probe, no peak).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

import torch

from tools.device_check.common import PASSED, LiveTable, arguments, skipped, summary, triton_device

LAYER = (12288, 12288)  # (out, in): GLM-130B's hidden width (docs/families.md)
ROWS = (1, 4)
FORMATS = ((8, None), (4, None), (4, 128))  # INT8 and INT4 rowwise (the reference's), INT4 in groups of 128
REPETITIONS, WARMUP = 20, 3
PROBE_GIB = 1.0
CPU_LAYER = (64, 256)  # the interpreter's size for --cpu
# HBM peak read bandwidth from NVIDIA's data sheets, in decimal GB/s, matched on torch's device name: H200 (SXM and
# NVL) 4.8 TB/s; H100 SXM5 3.35 TB/s, whose name reads "NVIDIA H100 80GB HBM3" (the PCIe and NVL cards differ).
HBM_PEAK_GBPS = ((r"\bH200\b", 4800.0), (r"\bH100\b.*\b(SXM|HBM3)", 3350.0))


def hbm_peak_gbps(device_name: str) -> float | None:
    """The spec-sheet HBM bandwidth of the GPU called ``device_name``; None where this table does not know it."""
    for pattern, gbps in HBM_PEAK_GBPS:
        if re.search(pattern, device_name):
            return gbps
    return None


def share(gbps: float, ceiling: float | None) -> str:
    return "unknown" if not ceiling else f"{gbps / ceiling:.0%}"


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.split("\n")[0], argv)
    device = triton_device(args)
    if isinstance(device, str):
        return skipped(device)
    from glm_engine.bench.dequant_gemm import time_kernels
    from glm_engine.bench.roofline import measure_read_bandwidth

    if args.cpu:
        name, peak, measured, layer, repetitions, warmup = "the CPU (interpreter)", None, None, CPU_LAYER, 2, 1
    else:
        name, layer, repetitions, warmup = torch.cuda.get_device_name(device), LAYER, REPETITIONS, WARMUP
        peak = hbm_peak_gbps(name)
        measured = measure_read_bandwidth(device, PROBE_GIB, ("fp16",)).gbps
    print(f"{name}: HBM peak {f'{peak:.0f} GB/s' if peak else 'unknown'}, measured read "
          f"{f'{measured:.0f} GB/s' if measured else '-'}\n")  # fmt: skip
    live = LiveTable(["layer", "M", "format", "ms", "GB/s", "of HBM peak", "of measured", "x fp16", "kernel"])
    timings = time_kernels(device, [layer], ROWS, FORMATS, repetitions, warmup)
    for t in timings:
        shape = f"{t.shape[0]}x{t.shape[1]}"
        row = [shape, t.rows, t.format, t.seconds * 1e3, t.weight_gbps, share(t.weight_gbps, peak)]
        live.add([*row, share(t.weight_gbps, measured), t.vs_fp16, t.kernel])
    m1 = {t.format: t.weight_gbps for t in timings if t.rows == 1}
    parts = [f"{fmt} {gbps:.3g} GB/s ({share(gbps, peak)})" for fmt, gbps in m1.items()]
    summary(f"M=1 of HBM peak {f'{peak:.0f}' if peak else 'unknown'}: " + ", ".join(parts))
    return PASSED


if __name__ == "__main__":
    sys.exit(main())
