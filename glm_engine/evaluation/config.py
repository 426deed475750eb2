"""Task YAMLs with the reference's schema (docs/evaluation.md#task-files), checked field by field.

The reference parses them with ``dataclass_wizard``: dashed and underscored keys both work, fields have per-type
defaults. Here an unknown key, a key of another task type, a value of the wrong type or ``unidirectional`` without
``use_task_mask`` is a :class:`~glm_engine.errors.TaskError` naming the file and the key, before any model loads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from glm_engine.errors import TaskError
from glm_engine.generation.options import STRATEGIES
from glm_engine.generation.strategies import beam_candidates_per_step

# Where `glm-engine evaluate` finds the example tasks shipped with the package (built for the demo model).
EXAMPLE_TASKS_DIR = Path(__file__).resolve().parent.parent / "assets" / "eval_tasks"
EXAMPLES = "examples"  # the task argument that names them
# The reference's default glob (evaluation/configs.py); a plain string pattern is one group of this name.
DEFAULT_FILE_PATTERN = "**/*.json*"
SINGLE_GROUP = "all"


class TaskType(str, Enum):
    MULTIPLE_CHOICE = "mul"
    GENERATION = "gen"
    LANGUAGE_MODEL = "lm"


DEFAULT_METRICS = {
    TaskType.MULTIPLE_CHOICE: ("Accuracy",),
    TaskType.GENERATION: ("EM", "F1"),
    TaskType.LANGUAGE_MODEL: ("PPL",),
}
# Keys only one task type has (the reference's GenerationTaskConfig / LanguageModelTaskConfig).
GENERATION_KEYS = (
    "sampling_strategy",
    "num_beams",
    "length_penalty",
    "no_repeat_ngram_size",
    "min_gen_length",
    "max_gen_length",
)
TYPE_KEYS = {TaskType.GENERATION: GENERATION_KEYS, TaskType.LANGUAGE_MODEL: ("generation_length",)}


@dataclass(frozen=True)
class TaskConfig:
    """One task, as its YAML says; defaults are the reference's. ``source`` is the YAML file (for messages and the
    default data folder)."""

    name: str
    type: TaskType
    path: str
    module: str | None = None
    metrics: tuple[str, ...] = ()  # empty: the task's default metrics
    use_task_mask: bool = False
    use_multitask_encoding: bool = False
    unidirectional: bool = False
    max_seq_length: int = 2048
    file_pattern: str | dict[str, str] = DEFAULT_FILE_PATTERN
    micro_batch_size: int = 1
    sampling_strategy: str = "BaseStrategy"
    num_beams: int = 4
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 3
    min_gen_length: int = 0
    max_gen_length: int = 128
    generation_length: int = 256
    source: Path | None = field(default=None, compare=False)

    @property
    def groups(self) -> dict[str, str]:
        """Group name -> glob; a plain pattern is the single group ``all``."""
        if isinstance(self.file_pattern, str):
            return {SINGLE_GROUP: self.file_pattern}
        return dict(self.file_pattern)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "type": (str,),
    "path": (str,),
    "module": (str, type(None)),
    "metrics": (list,),
    "use_task_mask": (bool,),
    "use_multitask_encoding": (bool,),
    "unidirectional": (bool,),
    "max_seq_length": (int,),
    "file_pattern": (str, dict),
    "micro_batch_size": (int,),
    "sampling_strategy": (str,),
    "num_beams": (int,),
    "length_penalty": (float, int),
    "no_repeat_ngram_size": (int,),
    "min_gen_length": (int,),
    "max_gen_length": (int,),
    "generation_length": (int,),
}
REQUIRED = ("name", "type", "path")


def parse_task_config(data: Any, source: Path | str = "<task>") -> TaskConfig:
    """A :class:`TaskConfig` from a YAML mapping; every problem is a TaskError naming ``source`` and the key."""
    where = str(source)
    if not isinstance(data, dict):
        raise TaskError(f"{where}: a task YAML must be a mapping of keys to values, got {type(data).__name__}")
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in _FIELD_TYPES:
            known = ", ".join(sorted(_FIELD_TYPES))
            raise TaskError(f"{where}: unknown key {raw_key!r}; task keys are (dashed or underscored): {known}")
        if key in values:
            raise TaskError(f"{where}: key {raw_key!r} is given twice (dashed and underscored)")
        expected = _FIELD_TYPES[key]
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            names = " or ".join(t.__name__ for t in expected if t is not type(None))
            raise TaskError(f"{where}: {raw_key!r} must be {names}, got {value!r}")
        values[key] = value
    missing = [k for k in REQUIRED if k not in values]
    if missing:
        raise TaskError(f"{where}: missing required key(s) {', '.join(missing)}")
    try:
        task_type = TaskType(values["type"])
    except ValueError:
        kinds = ", ".join(t.value for t in TaskType)
        raise TaskError(f"{where}: type must be one of {kinds}, got {values['type']!r}") from None
    values["type"] = task_type
    for other, keys in TYPE_KEYS.items():
        stray = [k for k in keys if k in values and other is not task_type]
        if stray:
            raise TaskError(f"{where}: key {stray[0]!r} belongs to {other.value} tasks, not {task_type.value}")
    values["metrics"] = _metric_names(values.get("metrics"), where)
    if "file_pattern" in values:
        values["file_pattern"] = _file_pattern(values["file_pattern"], where)
    if "length_penalty" in values:
        values["length_penalty"] = float(values["length_penalty"])
    config = TaskConfig(**values, source=Path(source) if isinstance(source, Path) else None)
    _check(config, where)
    return config


def _metric_names(names: list | None, where: str) -> tuple[str, ...]:
    """The named metrics; empty means the task's defaults (:data:`DEFAULT_METRICS` for the type's built-in task)."""
    if names is None:
        return ()
    if not names or not all(isinstance(n, str) for n in names):
        raise TaskError(f"{where}: metrics must be a non-empty list of metric names, got {names!r}")
    return tuple(names)


def _file_pattern(pattern: str | dict, where: str) -> str | dict[str, str]:
    if isinstance(pattern, dict):
        if not pattern or not all(isinstance(k, str) and isinstance(v, str) for k, v in pattern.items()):
            raise TaskError(f"{where}: file_pattern must be a glob or a mapping of group name to glob, got {pattern!r}")
        return dict(pattern)
    return pattern


def _check(config: TaskConfig, where: str) -> None:
    """Cross-field rules: the reference asserts ``unidirectional`` needs ``use_task_mask``; sizes are positive."""
    if config.unidirectional and not config.use_task_mask:
        raise TaskError(f"{where}: unidirectional needs use_task_mask: true (causal attention goes with [gMASK])")
    if config.use_multitask_encoding:
        raise TaskError(f"{where}: use_multitask_encoding is not supported (the reference does not support it either)")
    if config.sampling_strategy not in STRATEGIES:
        raise TaskError(f"{where}: sampling_strategy must be one of {', '.join(STRATEGIES)}")
    positive = {
        "max_seq_length": config.max_seq_length,
        "micro_batch_size": config.micro_batch_size,
        "num_beams": config.num_beams,
        "max_gen_length": config.max_gen_length,
        "generation_length": config.generation_length,
    }
    for key, value in positive.items():
        if value < 1:
            raise TaskError(f"{where}: {key} must be at least 1, got {value}")
    if config.min_gen_length < 0:
        raise TaskError(f"{where}: min_gen_length must be >= 0, got {config.min_gen_length}")
    if not math.isfinite(config.length_penalty):
        raise TaskError(f"{where}: length_penalty must be a finite number, got {config.length_penalty}")
    if config.no_repeat_ngram_size < 0 or config.no_repeat_ngram_size == 1:
        raise TaskError(f"{where}: no_repeat_ngram_size must be 0 (off) or >= 2, got {config.no_repeat_ngram_size}")
    if config.type is TaskType.LANGUAGE_MODEL and config.generation_length >= config.max_seq_length - 1:
        raise TaskError(
            f"{where}: generation_length {config.generation_length} must be below max_seq_length - 1 "
            f"({config.max_seq_length - 1}), the window it slides in"
        )


def check_beams_fit(config: TaskConfig, vocab_size: int, end_tokens: int) -> None:
    """A TaskError when a beam-search task asks for more candidate tokens per step than the model's vocabulary holds
    (checked before the model loads, from its config, and again by the Python API)."""
    if config.type is not TaskType.GENERATION or config.sampling_strategy != "BeamSearchStrategy":
        return
    per_beam = beam_candidates_per_step(1, end_tokens)
    if per_beam * config.num_beams > vocab_size:
        raise TaskError(
            f"task {config.name}: num_beams {config.num_beams} draws {per_beam * config.num_beams} candidate tokens "
            f"per step ({per_beam} per beam), more than the model's {vocab_size}; use at most {vocab_size // per_beam}"
        )


def load_task_file(path: Path) -> TaskConfig:
    """Read and check one task YAML."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TaskError(f"{where}: not valid YAML: {problem}") from None
    except UnicodeDecodeError as exc:
        raise TaskError(f"{path}: not UTF-8 text: {exc}") from None
    return parse_task_config(data, path)


def find_task_files(arguments: Iterable[str | Path]) -> list[Path]:
    """Task YAML files named on the command line: files as given, folders searched recursively for ``*.yaml``,
    the word ``examples`` (or nothing at all) for the example tasks shipped with the package (a local folder of that
    name is ``./examples``)."""
    arguments = list(arguments) or [EXAMPLES]
    found: list[Path] = []
    for argument in arguments:
        path = EXAMPLE_TASKS_DIR if str(argument) == EXAMPLES else Path(argument)
        if path.is_dir():
            yamls = sorted(path.rglob("*.yaml"))
            if not yamls:
                raise TaskError(f"{path}: no *.yaml task files in this folder or below it")
            found.extend(yamls)
        elif path.is_file():
            found.append(path)
        else:
            raise TaskError(
                f"task {argument}: no such file or folder (give task YAMLs, folders of them, or 'examples')"
            )
    return found
