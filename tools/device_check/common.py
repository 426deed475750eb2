"""What the device-check steps share: the arguments they take, the device they run on, the table they print and the
summary line and exit code the runner reads (``runner.py``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

SUMMARY_PREFIX = "SUMMARY: "
# Exit codes of a step: the runner's status column. 1 is Python's for an uncaught exception and 2 argparse's usage
# error, so a step that crashes is never read as one that measured a failure.
PASSED, FAILED, SKIPPED = 0, 4, 3


class NoDevice(Exception):
    """The step has nothing to check here (no GPU, no triton ...); the message says why."""


def arguments(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """``--cpu``: run on the CPU at small sizes; ``--backend``: the GPU backend (default: the torch.cuda one here)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU at small sizes (a rehearsal, and the tests)")
    parser.add_argument("--backend", default="auto", help="cuda or rocm_dcu (default: whichever is available)")
    return parser.parse_args(argv)


def gpu_backend_name(requested: str = "auto") -> str:
    """The torch.cuda backend to check: ``requested``, or the available one of cuda and rocm_dcu; NoDevice if none."""
    from glm_engine.backends.registry import get_backend

    names = ("cuda", "rocm_dcu") if requested == "auto" else (requested,)
    reasons = []
    for name in names:
        verdict = get_backend(name).availability()
        if verdict:
            return name
        reasons.append(f"{name}: {verdict.reason.split(';')[0]}")  # its first clause: the table stays compact
    raise NoDevice("; ".join(reasons))


def target(args: argparse.Namespace) -> tuple[torch.device, str]:
    """The device and backend name a step runs on: the CPU with ``--cpu``, else the GPU backend's device 0."""
    if args.cpu:
        return torch.device("cpu"), "cpu"
    return torch.device("cuda", 0), gpu_backend_name(args.backend)


def cell(value: object) -> str:
    """A table cell: floats in short scientific notation where small or large, else three digits."""
    if isinstance(value, float):
        return f"{value:.2e}" if value and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.3g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def table_header(header: Sequence[str]) -> str:
    return "| " + " | ".join(header) + " |\n|" + "---|" * len(header)


def table_row(row: Sequence[object]) -> str:
    return "| " + " | ".join(cell(v) for v in row) + " |"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    return "\n".join([table_header(header), *(table_row(r) for r in rows)])


class LiveTable:
    """A Markdown table printed a row at a time, as each is measured: a step killed at its limit keeps its rows."""

    def __init__(self, header: Sequence[str]) -> None:
        self.rows: list[list[object]] = []
        print(table_header(header), flush=True)

    def add(self, row: Sequence[object]) -> None:
        self.rows.append(list(row))
        print(table_row(row), flush=True)


def summary(text: str) -> None:
    """The one line the runner's table shows for this step."""
    print(SUMMARY_PREFIX + text, flush=True)


def skipped(why: str) -> int:
    """Report why the step has nothing to check here (the runner's status column says SKIP)."""
    summary(why)
    return SKIPPED


def triton_device(args: argparse.Namespace) -> torch.device | str:
    """The device the Triton steps run on, or why they cannot run here (a str). ``--cpu`` runs Triton's interpreter,
    which must be chosen before triton is imported."""
    if args.cpu:
        import os

        os.environ.setdefault("TRITON_INTERPRET", "1")
    from glm_engine.kernels.triton import triton_verdict

    ok, why = triton_verdict()
    if not ok:
        return why
    try:
        return target(args)[0]
    except NoDevice as exc:
        return str(exc)
