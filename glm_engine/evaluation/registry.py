"""Which task a YAML's ``module`` picks: the type's built-in task when there is none, the built-in equivalent of one
of the reference's dotted names, or a user's class (any importable subclass of
:class:`~glm_engine.evaluation.tasks.EvaluationTask`, named by its dotted path).

It sits above :mod:`glm_engine.evaluation.tasks` and :mod:`glm_engine.evaluation.lambada` (LAMBADA's task builds on
the generation task), so both are imported here and neither imports the other's registry.
"""

from __future__ import annotations

import importlib

from glm_engine.errors import TaskError
from glm_engine.evaluation.config import TaskConfig, TaskType
from glm_engine.evaluation.lambada import LambadaTask
from glm_engine.evaluation.tasks import (
    EvaluationTask,
    GenerationTask,
    LanguageModelTask,
    MultipleChoiceTask,
    PileTask,
)

DEFAULT_TASKS: dict[TaskType, type[EvaluationTask]] = {
    TaskType.MULTIPLE_CHOICE: MultipleChoiceTask,
    TaskType.GENERATION: GenerationTask,
    TaskType.LANGUAGE_MODEL: LanguageModelTask,
}

# The reference's dotted names (G:tasks/*, G:evaluation/__init__.py) and the built-in task that does the same.
REFERENCE_MODULES: dict[str, type[EvaluationTask]] = {
    "tasks.lambada.task.LAMBADA": LambadaTask,
    "tasks.mmlu.task.MMLU": MultipleChoiceTask,  # MMLU's "Overall" is the report's overall row
    "tasks.language-modeling.pile.Pile": PileTask,
    "evaluation.MultiChoiceTask": MultipleChoiceTask,
    "evaluation.GenerationTask": GenerationTask,
    "evaluation.LanguageModelTask": LanguageModelTask,
}
REFERENCE_PREFIXES = ("tasks.", "evaluation.")


def resolve_task(config: TaskConfig) -> EvaluationTask:
    """The task object for ``config``: its ``module`` (a reference name or a user's class), else the type's default."""
    where = str(config.source or config.name)
    if config.module is None:
        cls = DEFAULT_TASKS[config.type]
    elif config.module in REFERENCE_MODULES:
        cls = REFERENCE_MODULES[config.module]
    else:
        cls = _import_class(config.module, where)
    if cls.task_type is not config.type:
        raise TaskError(
            f"{where}: module {config.module} is a {cls.task_type.value} task, but type is {config.type.value}"
        )
    return cls(config)


def _import_class(dotted: str, where: str) -> type[EvaluationTask]:
    module_name, _, class_name = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else None
    except ImportError as exc:
        if dotted.startswith(REFERENCE_PREFIXES):
            builtins = ", ".join(REFERENCE_MODULES)
            raise TaskError(
                f"{where}: the reference's task module {dotted} has no glm-engine equivalent; built-in ones are "
                f"{builtins}, or name your own EvaluationTask subclass"
            ) from None
        raise TaskError(f"{where}: cannot import module {module_name!r} for task class {dotted}: {exc}") from None
    cls = getattr(module, class_name, None) if module is not None else None
    if not (isinstance(cls, type) and issubclass(cls, EvaluationTask)):
        raise TaskError(
            f"{where}: module {dotted!r} must name a subclass of glm_engine.evaluation.tasks.EvaluationTask"
        )
    return cls
