"""``glm-engine evaluate``: score a model on task YAMLs in the reference's format (its ``evaluate.py``).

Without a task argument (or with ``examples``) it runs the small example tasks shipped with the package on the
built-in demo model, in seconds.
"""

from __future__ import annotations

import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from glm_engine.checkpoint.atomic import write_atomically
from glm_engine.cli.errors import user_errors
from glm_engine.cli.model_kind import require_evaluable
from glm_engine.cli.option_checks import refuse_empty
from glm_engine.cli.output_paths import check_output_file
from glm_engine.cli.progress import file_progress, progress_bar
from glm_engine.engine import DEFAULT_MODEL, load
from glm_engine.evaluation.config import TaskType, check_beams_fit, find_task_files, load_task_file
from glm_engine.evaluation.datasets import DataWarning
from glm_engine.evaluation.report import render_tables, to_json
from glm_engine.evaluation.runner import prepare, run_prepared


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


def _print_note(message: Warning | str, *_: object, **__: object) -> None:
    """Warnings (skipped data) as one ``[glm-engine]`` line on stderr."""
    print(f"[glm-engine] {message}", file=sys.stderr)


def evaluate(
    tasks: Annotated[
        list[str] | None,
        typer.Argument(
            help="task YAML files or folders of them (searched recursively); 'examples' or nothing: the shipped ones"
        ),
    ] = None,
    task: Annotated[
        list[str] | None, typer.Option("--task", help="the same, as the reference's --task (repeatable)")
    ] = None,
    data_path: Annotated[
        Path | None, typer.Option(help="folder each task's `path` is joined onto; default: the YAML's own folder")
    ] = None,
    checkpoint: Annotated[
        str | None, typer.Option(help="GLM-130B folder (SAT, native), export or preset; default: the demo model")
    ] = None,
    backend: Annotated[str, typer.Option(help="backend name, or auto for the best available")] = "auto",
    dtype: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16; default: the backend's first choice")] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(help="the tokenizer file or its folder; default: the checkpoint's own (GLM-130B: icetk's)"),
    ] = None,
    config: Annotated[
        str | None, typer.Option(help="preset name or config.json, for a SAT folder without config.json")
    ] = None,
    output: Annotated[OutputFormat, typer.Option(help="table for people, json for tools")] = OutputFormat.table,
    out: Annotated[Path | None, typer.Option(help="also write the report to this file")] = None,
) -> None:
    """Evaluate on multiple-choice, generation and language-modelling tasks (the reference's YAML and jsonl); causal
    models (ChatGLM2/3, GLM-4) on multiple-choice and language-modelling tasks."""
    with user_errors():
        refuse_empty(
            {
                "a task argument": tasks,
                "--task": task,
                "--checkpoint": checkpoint,
                "--tokenizer": tokenizer,
                "--config": config,
            }
        )
        if out is not None:
            check_output_file(out, "--out")  # before the model loads, not after the whole evaluation
        configs = [load_task_file(path) for path in find_task_files([*(tasks or []), *(task or [])])]
        prepared = prepare(configs, data_path)  # every task checked before the model loads
        generation = [c for c in configs if c.type is TaskType.GENERATION]
        model = require_evaluable(checkpoint or DEFAULT_MODEL, config, backend, [c.name for c in generation]).config
        for task_config in generation:  # a blank-filling model: its config has GLM's vocabulary layout
            check_beams_fit(task_config, model.vocab_size, len(model.vocab_layout.end_tokens))
        with progress_bar("loading weights") as progress:
            engine = load(
                checkpoint or DEFAULT_MODEL,
                backend=backend,
                dtype=dtype,
                tokenizer=tokenizer,
                config=config,
                progress=progress,
            )
        for note in engine.notes:
            print(f"[glm-engine] {note}", file=sys.stderr)
        with file_progress() as update, warnings.catch_warnings():
            warnings.simplefilter("always", DataWarning)
            warnings.showwarning = _print_note
            results = run_prepared(engine, prepared, update)
        if output is OutputFormat.json:
            text = to_json(results, engine.source)
            print(text)
        else:
            console = Console(record=out is not None)
            render_tables(results, engine.source, console)
            text = console.export_text() if out is not None else ""
        if out is not None:
            write_atomically(out, lambda tmp: tmp.write_text(text.rstrip("\n") + "\n", encoding="utf-8"))
