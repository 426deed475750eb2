"""Results per file, per group and overall, as the reference reports them, rendered as a table or JSON.

A group summarises its rows (one per file, or per labelled subset of a file) by the max, the median and the average
of each metric weighted by the size of the reference's dataset (G:evaluation/tasks.py): the example count, or for
language models the number of windows; ``overall`` does the same over every row of the task (MMLU's "Overall").
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

STATS = ("average", "median", "max")
OVERALL = "overall"


@dataclass(frozen=True)
class FileResult:
    """One reported row: a data file (or one labelled subset of it) and its metric values."""

    group: str
    file: str
    num_examples: int
    metrics: dict[str, float]
    subset: str = ""
    weight: float | None = None  # in the group and overall averages; None: num_examples (lm: its windows)

    @property
    def label(self) -> str:
        return f"{self.file} [{self.subset}]" if self.subset else self.file


@dataclass(frozen=True)
class Summary:
    """Max, median and weighted average (examples; lm: windows) of each metric over some rows."""

    num_rows: int
    num_examples: int
    stats: dict[str, dict[str, float]]  # stat name -> metric -> value


def summarize(rows: Sequence[FileResult]) -> Summary:
    """The three statistics of every metric over ``rows`` (which must share their metrics)."""
    names = list(rows[0].metrics)
    total = sum(r.num_examples for r in rows)
    weights = [r.num_examples if r.weight is None else r.weight for r in rows]
    stats: dict[str, dict[str, float]] = {s: {} for s in STATS}
    for name in names:
        values = [r.metrics[name] for r in rows]
        stats["average"][name] = sum(v * w for v, w in zip(values, weights)) / sum(weights)
        stats["median"][name] = float(statistics.median(values))
        stats["max"][name] = max(values)
    return Summary(len(rows), total, stats)


@dataclass
class TaskResult:
    """Everything one task reports."""

    name: str
    type: str
    metrics: list[str]
    files: list[FileResult]
    seconds: float = 0.0
    groups: dict[str, Summary] = field(init=False)
    overall: Summary = field(init=False)

    def __post_init__(self) -> None:
        by_group: dict[str, list[FileResult]] = {}
        for row in self.files:
            by_group.setdefault(row.group, []).append(row)
        self.groups = {group: summarize(rows) for group, rows in by_group.items()}
        self.overall = summarize(self.files)


def to_json(results: Sequence[TaskResult], model: str) -> str:
    """The whole report as a JSON document (stable keys, for tools)."""

    def summary(s: Summary) -> dict[str, Any]:
        return {"rows": s.num_rows, "examples": s.num_examples, **s.stats}

    tasks = [
        {
            "name": r.name,
            "type": r.type,
            "metrics": r.metrics,
            "seconds": round(r.seconds, 3),
            "files": [
                {
                    "group": f.group,
                    "file": f.file,
                    "subset": f.subset,
                    "examples": f.num_examples,
                    "weight": f.num_examples if f.weight is None else f.weight,
                    "metrics": f.metrics,
                }
                for f in r.files
            ],
            "groups": {g: summary(s) for g, s in r.groups.items()},
            OVERALL: summary(r.overall),
        }
        for r in results
    ]
    return json.dumps({"model": model, "tasks": tasks}, indent=2, ensure_ascii=False)


def _cells(values: dict[str, float], names: Sequence[str]) -> list[str]:
    return [f"{values[n]:.4g}" if abs(values[n]) < 1e4 else f"{values[n]:.4e}" for n in names]


def task_table(result: TaskResult) -> Table:
    """One table per task: a row per file, then each group's and the overall statistics."""
    table = Table(title=f"{result.name} ({result.type}, {result.seconds:.1f} s)", title_justify="left")
    for column in ("group", "file / statistic", "examples", *result.metrics):
        table.add_column(column, justify="right" if column in ("examples", *result.metrics) else "left")
    for row in result.files:
        table.add_row(row.group, row.label, str(row.num_examples), *_cells(row.metrics, result.metrics))
    summaries = [*result.groups.items(), (OVERALL, result.overall)]
    for name, summary in summaries:
        table.add_section()
        for stat in STATS:
            table.add_row(name, stat, str(summary.num_examples), *_cells(summary.stats[stat], result.metrics))
    return table


def render_tables(results: Sequence[TaskResult], model: str, console: Console) -> None:
    console.print(f"model: {model}")
    for result in results:
        console.print(task_table(result))
