"""``python -m tools.device_check``: the device check (see the package docstring and tools/device_check.sh)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tools.device_check import STEPS, TOTAL_BUDGET_S, Step, step_named
from tools.device_check.runner import command, plan_table, run_step, summary_table


def main(argv: Sequence[str] | None = None, all_steps: Sequence[Step] = STEPS) -> int:
    """Run the chosen steps of ``all_steps`` (the tests pass steps of their own) and print the summary table; exit 1
    when any step failed, crashed or timed out."""
    parser = argparse.ArgumentParser(prog="tools/device_check.sh", description=__doc__)
    parser.add_argument("--cpu", action="store_true", help="run every step on the CPU at small sizes (a rehearsal)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (steps, limits, commands), run nothing")
    parser.add_argument("--only", action="append", default=[], help="run only this step (repeatable)")
    parser.add_argument("--skip", action="append", default=[], help="leave this step out (repeatable)")
    parser.add_argument("--backend", default="auto", help="cuda or rocm_dcu (default: whichever is available)")
    parser.add_argument("--limit-scale", type=float, default=1.0, help="multiply every step's time limit (slow hosts)")
    parser.add_argument("--out", type=Path, help="also write the report (the table, then every step's output) here")
    args = parser.parse_args(argv)
    try:
        chosen = [step_named(n, all_steps) for n in args.only] if args.only else list(all_steps)
        skipped = {step_named(n, all_steps).name for n in args.skip}
    except ValueError as exc:
        parser.error(str(exc))
    if args.limit_scale <= 0:
        parser.error("--limit-scale must be positive")
    steps = [
        dataclasses.replace(s, timeout_s=max(1, round(s.timeout_s * args.limit_scale)))
        for s in chosen
        if s.name not in skipped
    ]
    mode = "CPU rehearsal" if args.cpu else "GPU"
    budget = sum(s.timeout_s for s in steps)
    print(f"# device check ({mode}): {len(steps)} steps, at most {budget} s (the plan's budget: {TOTAL_BUDGET_S} s)\n")
    print(plan_table(steps, args.cpu, args.backend))
    if args.dry_run:
        return 0
    results = []
    started = time.monotonic()
    for number, step in enumerate(steps, 1):
        print(f"\n## {number}. {step.name} (limit {step.timeout_s} s): {step.shows}\n", flush=True)
        results.append(run_step(step, command(step, args.cpu, args.backend)))
    report = f"## Summary ({mode}, {time.monotonic() - started:.0f} s)\n\n{summary_table(results)}"
    print("\n" + report)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        outputs = "\n\n".join(f"## {r.step.name}: {r.status}\n\n```\n{r.output.rstrip()}\n```" for r in results)
        (args.out / "device-check.md").write_text(f"# device check ({mode})\n\n{report}\n\n{outputs}\n")
        print(f"\nwritten: {args.out / 'device-check.md'}")
    return 1 if any(r.bad for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
