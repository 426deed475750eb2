"""``glm-engine conformance``: prove a backend computes what the CPU reference computes (or show what it supports,
or how fast its ops are)."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import torch
import typer

from glm_engine.backends.base import parse_dtype
from glm_engine.checkpoint.atomic import write_atomically
from glm_engine.cli.errors import USER_ERROR_EXIT_CODE, user_errors
from glm_engine.cli.output_paths import check_output_file
from glm_engine.cli.progress import progress_bar
from glm_engine.conformance.model_checks import run_model_checks
from glm_engine.conformance.report import ReportFormat, perf_report, results_report, selftest_report, support_report
from glm_engine.conformance.runner import resolve_backend, run_perf, run_tests, support_matrix
from glm_engine.conformance.selftest import self_test
from glm_engine.errors import InputError
from glm_engine.ops.interface import Op

MODEL_CHECKS = "model"  # the --op name of the tiny-model checks


class Mode(str, Enum):
    test = "test"
    support = "support"
    perf = "perf"


def _parse_ops(names: list[str] | None) -> tuple[list[Op] | None, bool]:
    """The ops to run (None: all) and whether the model checks run."""
    if not names:
        return None, True
    known = [op.value for op in Op] + [MODEL_CHECKS]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"unknown op {', '.join(unknown)}; choose from {', '.join(known)}")
    return [Op(n) for n in names if n != MODEL_CHECKS], MODEL_CHECKS in names


def _parse_dtypes(names: list[str] | None) -> list | None:
    if not names:
        return None
    return [parse_dtype(n) for n in names]


def _emit(text: str, out: Path | None) -> None:
    print(text)
    if out is not None:
        write_atomically(out, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def conformance(
    backend: Annotated[str, typer.Option(help="backend to check (see `glm-engine backends`)")] = "cpu",
    op: Annotated[
        list[str] | None, typer.Option(help="only this op (repeatable); 'model' for the tiny-model checks")
    ] = None,
    mode: Annotated[Mode, typer.Option(help="test against the float64 oracle, support matrix, or perf")] = Mode.test,
    output: Annotated[ReportFormat, typer.Option(help="md for people, json for tools, csv for sheets")] = (
        ReportFormat.md
    ),
    dtype: Annotated[list[str] | None, typer.Option(help="fp32, bf16 or fp16 (repeatable); default: all")] = None,
    seed: Annotated[int | None, typer.Option(help="repeat a run's inputs (the report prints its seed)")] = None,
    out: Annotated[Path | None, typer.Option(help="also write the report to this file")] = None,
    self_test_: Annotated[
        bool, typer.Option("--self-test", help="check that deliberately broken op tables are caught, then exit")
    ] = False,
) -> None:
    """Check every op of a backend against the CPU reference in float64 (exit 1 when any row fails)."""
    with user_errors():
        if out is not None:
            check_output_file(out, "--out")  # before the checks run, not after them
        if self_test_:
            results = self_test(seed)
            _emit(selftest_report(results, output), out)
            if not all(r.caught for r in results):
                raise typer.Exit(USER_ERROR_EXIT_CODE)
            return
        ops, model = _parse_ops(op)
        dtypes = _parse_dtypes(dtype)
        if mode is Mode.support:
            chosen = resolve_backend(backend)
            _emit(support_report(chosen.name, support_matrix(chosen, ops, dtypes), output), out)
            return
        chosen = resolve_backend(backend)
        if mode is Mode.perf:
            with progress_bar(f"timing {chosen.name} ops") as update:
                rows = run_perf(chosen, ops, dtypes, progress=update)
            device = str(chosen.device())
            if chosen.device_type == "cpu":  # CPU timings depend on the thread count (and on other load)
                device += f", torch threads: {torch.get_num_threads()}"
            _emit(perf_report(chosen.name, device, rows, output), out)
            return
        started = time.perf_counter()
        with progress_bar(f"testing {chosen.name} ops") as update:
            run = run_tests(chosen, ops, dtypes, seed, progress=update)
        if model:
            with progress_bar(f"tiny-model checks on {chosen.name}") as update:
                run.results.extend(run_model_checks(chosen, dtypes, progress=update))
        _emit(results_report(run, output, time.perf_counter() - started), out)
        if not run.passed:
            raise typer.Exit(USER_ERROR_EXIT_CODE)
