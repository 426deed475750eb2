"""``load_chatglm`` and ``ChatGLMEngine``: the ChatGLM-only API of 0.1, kept one release over :func:`load`.

``glm_engine.load`` now loads ChatGLM folders, presets and exports, and ``Engine.chat`` takes OpenAI-style messages;
these aliases keep 0.1's call shapes (``chat(query, history) -> (reply, history)``, ``generate(prompt) -> str``)
and warn once per call site.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from glm_engine.engine.engine import Engine
from glm_engine.engine.load import load
from glm_engine.errors import InputError

History = list[tuple[str, str]]


class ChatGLMEngine(Engine):
    """A ChatGLM model with 0.1's chat and generate signatures (deprecated: use :class:`Engine`)."""

    def chat(  # type: ignore[override]
        self,
        query: str,
        history: Sequence[tuple[str, str]] = (),
        generator: torch.Generator | None = None,
        on_text: Callable[[str], None] | None = None,
        **options: object,
    ) -> tuple[str, History]:
        """One round, as the reference's ``model.chat(tokenizer, query, history)``: ``(response, history)``."""
        if not isinstance(query, str):
            raise InputError(f"query must be a str, got {type(query).__name__}")
        messages = []
        for past_query, response in history:
            messages += [{"role": "user", "content": past_query}, {"role": "assistant", "content": response}]
        reply = super().chat([*messages, {"role": "user", "content": query}], generator, on_text, **options)
        return reply["content"], [*history, (query, reply["content"])]

    def generate(  # type: ignore[override]
        self, prompt: str, generator: torch.Generator | None = None, **options: object
    ) -> str:
        """The text the model continues ``prompt`` with (``model.generate`` on ``tokenizer(prompt)``, decoded)."""
        return super().generate(prompt, generator=generator, **options)[0].blanks[0][0]


def load_chatglm(
    path_or_preset: str | Path,
    backend: str = "auto",
    dtype: str | torch.dtype | None = None,
    tokenizer: str | Path | None = None,
    device_index: int = 0,
    progress: Any = None,
    quant: str | None = None,
    quant_scheme: str = "rowwise",
    quant_group_size: int | None = None,
    quant_output: bool = False,
    cuda_graphs: bool | None = None,
    backend_options: dict[str, object] | None = None,
    config: Any = None,
    **kwargs: Any,
) -> ChatGLMEngine:
    """Deprecated: ``glm_engine.load`` loads every family. Loads a ChatGLM model with 0.1's interface, 0.1's
    positional order included (further keyword options as :func:`~glm_engine.engine.load.load`)."""
    warnings.warn(
        "load_chatglm is deprecated: glm_engine.load() loads ChatGLM too, and Engine.chat() takes OpenAI-style "
        "messages",
        DeprecationWarning,
        stacklevel=2,
    )
    engine = load(
        path_or_preset,
        backend,
        dtype,
        tokenizer,
        config,
        device_index,
        progress,
        quant=quant,
        quant_scheme=quant_scheme,
        quant_group_size=quant_group_size,
        quant_output=quant_output,
        cuda_graphs=cuda_graphs,
        backend_options=backend_options,
        **kwargs,
    )
    if not engine.family.chat_model:
        raise InputError(f"{engine.source} is a {engine.family.title} model, not ChatGLM: use glm_engine.load()")
    return ChatGLMEngine(**{f.name: getattr(engine, f.name) for f in fields(Engine)})
