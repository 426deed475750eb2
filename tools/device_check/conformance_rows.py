"""Step 6: the conformance suite's rows on the GPU backend, quick mode: worst NMSE per check, failures listed.

What ``glm-engine conformance --backend cuda`` runs (docs/conformance.md), through the same functions, in an order
that keeps what a cut step already measured: the op cases one op at a time (attention and the linears first), then
the tiny-model checks one family at a time at TP=1 (TP=2 needs two GPUs; the NCCL step checks the process group).
Quick mode differs from the CLI's default only there, and in a fixed seed, so a second run repeats the first. Each row
is a check and dtype: rows run, failures, the worst NMSE, its bound and the fraction of the bound (``of bound`` near 1
is a check close to failing). ``--cpu`` runs fp32 and the first family only.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from tools.device_check.common import FAILED, PASSED, LiveTable, NoDevice, arguments, skipped, summary, target

SEED = 19  # fixed: the rows of two runs are comparable (the CLI draws a new seed unless given --seed)
OP_ORDER = ("attention", "grouped_attention", "linear")  # most telling on a GPU first; the other ops follow
QUICK_TP = (1,)


def ordered_ops() -> list:
    from glm_engine.ops.interface import Op

    first = [Op(name) for name in OP_ORDER]
    return first + [op for op in Op if op not in first]


def add_rows(live: LiveTable, results: Sequence) -> list[str]:
    """Print the worst row per (check, dtype) of ``results``; the failed rows' descriptions."""
    from glm_engine.conformance.report import worst_by_check
    from glm_engine.conformance.runner import Status

    for row in worst_by_check(results):
        of_bound = row.get("of_bound")
        live.add(
            [
                row["check"],
                row["dtype"],
                row["rows"],
                row["failed"],
                "-" if row.get("worst_nmse") is None else row["worst_nmse"],
                "-" if row.get("max_nmse") is None else row["max_nmse"],
                "-" if of_bound is None else of_bound,
                row.get("shape") or "",
            ]
        )
    return [f"{r.check} {r.dtype} {r.shape}: {r.detail}"[:160] for r in results if r.status is Status.FAIL]


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.split("\n")[0], argv)
    try:
        _, name = target(args)
    except NoDevice as exc:
        return skipped(str(exc))
    from glm_engine.conformance.model_checks import run_model_checks
    from glm_engine.conformance.runner import resolve_backend, run_tests
    from glm_engine.model.registry import FAMILIES

    backend = resolve_backend(name)
    dtypes = [torch.float32] if args.cpu else None  # None: every dtype the backend computes in
    families = [f.name for f in FAMILIES][: 1 if args.cpu else None]
    live = LiveTable(["check", "dtype", "rows", "failed", "worst nmse", "bound", "of bound", "worst shape"])
    failures: list[str] = []
    for op in ordered_ops():
        failures += add_rows(live, run_tests(backend, [op], dtypes, SEED).results)
    for family in families:
        failures += add_rows(live, run_model_checks(backend, dtypes, tp=QUICK_TP, families=[family]))
    for failure in failures:
        print(f"FAIL {failure}")
    summary(
        f"{len(live.rows)} check x dtype rows (seed {SEED}), {len(failures)} failing rows"
        + (": " + "; ".join(failures[:3]) if failures else "")
    )
    return FAILED if failures else PASSED


if __name__ == "__main__":
    sys.exit(main())
