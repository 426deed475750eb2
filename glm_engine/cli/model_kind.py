"""Which commands take which kind of model, checked from metadata before anything loads: ``run`` fills GLM blanks
with GLM-130B's generation options, as ``evaluate``'s generation tasks do (its multiple-choice and language-model tasks
take causal models too); ``chat`` needs a family with a chat format."""

from __future__ import annotations

from glm_engine.engine.source import ModelSource, open_source
from glm_engine.errors import InputError


def require_blank_infilling(model: str, config: str | None, backend: str, command: str) -> ModelSource:
    """The model's source (metadata only); an InputError naming ``glm-engine chat`` for a chat model given to
    ``run``/``evaluate``."""
    source = open_source(model, config)
    if not source.family.blank_infilling:
        where = f" --backend {backend}" if backend != "auto" else ""
        raise InputError(
            f"{source.description} is a {source.family.title} model, which chats; `glm-engine {command}` fills "
            f"GLM blanks: use `glm-engine chat --checkpoint {model}{where}` (or Engine.generate / Engine.chat)"
        )
    return source


def require_chat(model: str, backend: str) -> None:
    """An InputError naming ``glm-engine run`` for a model without a chat format given to ``chat``."""
    source = open_source(model)
    if not source.family.chat_model:
        where = f" --backend {backend}" if backend != "auto" else ""
        raise InputError(
            f"{source.description} is a {source.family.title} model, which has no chat format: run it with "
            f"`glm-engine run --checkpoint {model}{where}`"
        )


def require_evaluable(model: str, config: str | None, backend: str, generation_tasks: list[str]) -> ModelSource:
    """The model's source (metadata only); an InputError for a model ``evaluate`` cannot score: a chat model that is
    neither (ChatGLM-6B), or generation tasks (GLM blank filling) given to a causal model, naming the tasks."""
    source = open_source(model, config)
    family = source.family
    if family.blank_infilling:
        return source
    if not family.causal_lm:
        require_blank_infilling(model, config, backend, "evaluate")
    if generation_tasks:
        raise InputError(
            f"{source.description} is a causal {family.title} model; the generation tasks "
            f"{', '.join(generation_tasks)} fill GLM blanks: evaluate it on multiple-choice (mul) and language-model "
            "(lm) tasks"
        )
    return source
