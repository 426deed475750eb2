"""Run task configs on a loaded engine: find each group's data files, predict them, compute the metrics per file.

Every task is checked (its module, metrics and data files) before the model loads, and every data file is read once
it has (tokenizing needs its tokenizer) before the first one is scored, so a typo in the last YAML or jsonl fails in
seconds, not after hours of scoring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glm_engine.engine import Engine
from glm_engine.errors import TaskError
from glm_engine.evaluation.config import TaskConfig, TaskType, check_beams_fit
from glm_engine.evaluation.metrics import Metric, resolve_metrics
from glm_engine.evaluation.registry import resolve_task
from glm_engine.evaluation.report import FileResult, TaskResult
from glm_engine.evaluation.tasks import EvaluationTask

# progress(label, done, total): examples of the file ``label`` scored so far.
Progress = Callable[[str, int, int], None]


@dataclass
class PreparedTask:
    """A task ready to run: its object, metric functions and data files per group."""

    task: EvaluationTask
    metrics: dict[str, Metric]
    data_dir: Path
    files: dict[str, list[Path]]
    examples: dict[Path, list[Any]] = field(default_factory=dict)  # read ahead by load_data, freed once scored

    def read(self, path: Path, engine: Engine) -> list[Any]:
        """The examples of one data file (at least one), checked against the task's and the model's lengths."""
        examples = self.task.load_examples(path, engine)
        if not examples:
            raise TaskError(f"{path}: no examples in this file")
        self.task.check(engine, examples)
        return examples

    def load_data(self, engine: Engine) -> None:
        """Read and check every data file now, so a bad line, or an example that does not fit, fails before any
        scoring."""
        for paths in self.files.values():
            for path in paths:
                if path not in self.examples:
                    self.examples[path] = self.read(path, engine)


class _FileProgress:
    """Counts one file's finished examples for a ``Progress`` callback."""

    def __init__(self, progress: Progress | None, label: str, total: int) -> None:
        self.progress, self.label, self.total, self.done = progress, label, total, 0

    def __call__(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.label, self.done, self.total)


def data_folder(config: TaskConfig, data_path: Path | None) -> Path:
    """``data_path / config.path``; without ``data_path``, relative to the folder of the task's YAML."""
    base = data_path if data_path is not None else (config.source.parent if config.source else Path.cwd())
    folder = base / config.path
    if not folder.is_dir():
        raise TaskError(f"task {config.name}: data folder {folder} does not exist (--data-path joined with path)")
    return folder


def find_data_files(config: TaskConfig, folder: Path) -> dict[str, list[Path]]:
    """Each group's files: its glob under ``folder`` (``**`` is recursive), sorted; a group without files is an
    error."""
    files = {}
    for group, pattern in config.groups.items():
        matched = sorted(p for p in folder.glob(pattern) if p.is_file())
        if not matched:
            raise TaskError(f"task {config.name}: no files match {pattern!r} under {folder} (group {group})")
        files[group] = matched
    return files


def prepare(configs: Sequence[TaskConfig], data_path: Path | None = None) -> list[PreparedTask]:
    """Resolve every task's class, metrics and files; raises before any scoring."""
    prepared = []
    for config in configs:
        task = resolve_task(config)
        metrics = resolve_metrics(task.metric_names, config.type, str(config.source or config.name))
        folder = data_folder(config, data_path)
        prepared.append(PreparedTask(task, metrics, folder, find_data_files(config, folder)))
    return prepared


def run_task(engine: Engine, prepared: PreparedTask, progress: Progress | None = None) -> TaskResult:
    """Score every file of one task; one row per file (or per labelled subset of a file)."""
    task, config = prepared.task, prepared.task.config
    started = time.perf_counter()
    rows = []
    for group, paths in prepared.files.items():
        for path in paths:
            label = path.relative_to(prepared.data_dir).as_posix()
            examples = prepared.examples.pop(path, None) or prepared.read(path, engine)
            advance = _FileProgress(progress, f"{config.name}: {label}", len(examples))
            predictions = task.predict(engine, examples, advance)
            weights = task.weights(engine, examples)
            for subset, indices in task.subsets(examples).items():
                chosen_predictions = [predictions[i] for i in indices]
                chosen_examples = [examples[i] for i in indices]
                values = {name: fn(chosen_predictions, chosen_examples) for name, fn in prepared.metrics.items()}
                weight = sum(weights[i] for i in indices)
                rows.append(FileResult(group, label, len(indices), values, subset, weight))
    return TaskResult(config.name, config.type.value, list(prepared.metrics), rows, time.perf_counter() - started)


def run_prepared(
    engine: Engine, prepared: Sequence[PreparedTask], progress: Progress | None = None
) -> list[TaskResult]:
    """Read every task's data, then score the tasks in order."""
    for task in prepared:
        if task.task.config.type is TaskType.GENERATION:  # GLM blank filling: its tokenizer has the vocabulary layout
            end_tokens = len(engine.tokenizer.layout.end_tokens)
            check_beams_fit(task.task.config, engine.runner.config.vocab_size, end_tokens)
    for task in prepared:
        task.load_data(engine)
    return [run_task(engine, p, progress) for p in prepared]


def evaluate(
    engine: Engine, configs: Sequence[TaskConfig], data_path: Path | None = None, progress: Progress | None = None
) -> list[TaskResult]:
    """Check every task and read all its data, then run them in order (the Python API of ``glm-engine evaluate``)."""
    return run_prepared(engine, prepare(configs, data_path), progress)
