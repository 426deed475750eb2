"""Conformance results as Markdown (people, READMEs), JSON (tools) or CSV (spreadsheets).

Every report is a header (what ran, where, with which seed) and rows; the test report adds the worst NMSE per check
as a fraction of its bound, which says how close each op is to failing.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from enum import Enum
from typing import Any

from glm_engine.conformance.runner import CaseResult, PerfRow, Status, SuiteRun, SupportRow
from glm_engine.conformance.selftest import SelfTestResult


class ReportFormat(str, Enum):
    md = "md"
    json = "json"
    csv = "csv"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, float) and value == 0:
        return "0"
    if isinstance(value, float):
        return f"{value:.3g}" if value and (abs(value) >= 1e4 or abs(value) < 1e-2) else f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown(header: Sequence[str], rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = [*header, ""] if header else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    lines.extend("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows)
    return "\n".join(lines)


def _csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: (row[c].value if isinstance(row[c], Enum) else row[c]) for c in columns})
    return buffer.getvalue()


def _json(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    return json.dumps({**meta, "rows": rows}, indent=2, default=lambda v: v.value if isinstance(v, Enum) else str(v))


def render(meta: dict[str, Any], header: Sequence[str], rows: list[dict[str, Any]], columns: Sequence[str],
           fmt: ReportFormat) -> str:  # fmt: skip
    if fmt is ReportFormat.json:
        return _json(meta, rows)
    if fmt is ReportFormat.csv:
        return _csv(rows, columns)
    return _markdown(header, rows, columns)


TEST_COLUMNS = ("status", "check", "shape", "dtype", "nmse", "max_nmse", "detail", "seed")


def worst_by_check(results: Sequence[CaseResult]) -> list[dict[str, Any]]:
    """Per (check, dtype): rows run, failures, and the row closest to its bound (its NMSE, bound and the fraction)."""
    summary: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        if r.status is Status.SKIP:
            continue
        entry = summary.setdefault(
            (r.check, r.dtype), {"check": r.check, "dtype": r.dtype, "rows": 0, "failed": 0, "worst_nmse": None}
        )
        entry["rows"] += 1
        entry["failed"] += r.status is Status.FAIL
        if r.nmse is None:
            continue
        of_bound = r.nmse / r.max_nmse if r.max_nmse else (0.0 if r.nmse == 0 else float("inf"))
        if entry["worst_nmse"] is None or of_bound > entry["of_bound"]:
            entry.update(worst_nmse=r.nmse, max_nmse=r.max_nmse, of_bound=of_bound, shape=r.shape)
    return list(summary.values())


def results_report(run: SuiteRun, fmt: ReportFormat, seconds: float | None = None) -> str:
    counts = {s: sum(r.status is s for r in run.results) for s in Status}
    verdict = "PASS" if run.passed else "FAIL"
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    summary_line = (
        f"**{verdict}**: {counts[Status.PASS]} passed, {counts[Status.FAIL]} failed, {counts[Status.SKIP]} skipped"
        f"{took}; seed {run.seed} (repeat with --seed {run.seed})"
    )
    rows = [asdict(r) for r in run.results]
    meta = {"backend": run.backend, "device": run.device, "seed": run.seed, "passed": run.passed, "seconds": seconds}
    if fmt is ReportFormat.json:
        return _json({**meta, "worst_by_check": worst_by_check(run.results)}, rows)
    if fmt is ReportFormat.csv:
        return _csv(rows, TEST_COLUMNS)
    header = [f"# conformance: {run.backend} on {run.device}", "", summary_line]
    worst = _markdown(
        ["", "## Worst NMSE per check"],
        worst_by_check(run.results),
        ("check", "dtype", "rows", "failed", "worst_nmse", "max_nmse", "of_bound", "shape"),
    )
    rows_md = _markdown(["", "## Rows"], rows, TEST_COLUMNS)
    return "\n".join(header) + "\n" + worst + "\n" + rows_md


SUPPORT_COLUMNS = ("op", "dtype", "quant_format", "supported", "reason")


def support_report(backend: str, rows: Sequence[SupportRow], fmt: ReportFormat) -> str:
    plain = [{**asdict(r), "supported": "yes" if r.supported else "no"} for r in rows]
    if fmt is ReportFormat.json:
        plain = [asdict(r) for r in rows]
    return render({"backend": backend}, [f"# supports(): {backend}"], plain, SUPPORT_COLUMNS, fmt)


PERF_COLUMNS = ("check", "shape", "dtype", "median_us", "gbps", "tflops", "detail")


def perf_report(backend: str, device: str, rows: Sequence[PerfRow], fmt: ReportFormat) -> str:
    header = [f"# perf: {backend} on {device}", "", "median of timed calls after warm-up; GB/s from every input and "
              "output moved once (quantized weights at their stored size)"]  # fmt: skip
    return render({"backend": backend, "device": device}, header, [asdict(r) for r in rows], PERF_COLUMNS, fmt)


SELFTEST_COLUMNS = ("table", "op", "caught", "failed_rows", "rows", "example")


def selftest_report(results: Sequence[SelfTestResult], fmt: ReportFormat) -> str:
    ok = all(r.caught for r in results)
    header = [
        "# conformance self-test",
        "",
        f"**{'PASS' if ok else 'FAIL'}**: each deliberately broken table must fail some rows; TorchOps must fail none",
    ]
    return render({"passed": ok}, header, [asdict(r) for r in results], SELFTEST_COLUMNS, fmt)
