"""The engine object ``load()`` returns: one surface for every family (``forward``, ``generate``, ``chat``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from glm_engine.backends.base import Backend, ModelRunner
from glm_engine.engine.arguments import check_prompts, index_tensor, mask_tensor
from glm_engine.errors import InputError
from glm_engine.generation.blank_filling import Completion
from glm_engine.generation.decode import TokenCallback
from glm_engine.model.family import Family
from glm_engine.model.registry import family_of


class NoTokenizer:
    """The tokenizer of an engine loaded with ``tokenizer=False`` (``forward`` on token ids only): any use of it is an
    InputError that says how to load one, instead of an AttributeError on None."""

    def __getattr__(self, name: str) -> Any:
        raise InputError(
            "this model was loaded without a tokenizer (tokenizer=False): forward() takes token ids; load it with a "
            "tokenizer (the default, or tokenizer=PATH) to generate, chat or evaluate text"
        )

    def __bool__(self) -> bool:
        return False


@dataclass
class Engine:
    """A model loaded on one backend, with its tokenizer and its family."""

    runner: ModelRunner
    tokenizer: Any
    backend: Backend
    source: str
    notes: list[str] = field(default_factory=list)
    banned_tokens: tuple[slice, ...] = ()  # id ranges never generated

    @property
    def config(self) -> Any:
        return self.runner.config

    @property
    def family(self) -> Family:
        return family_of(self.runner.config)

    @property
    def dtype(self) -> torch.dtype:
        return self.runner.dtype

    def generate(
        self,
        prompts: str | Sequence[str],
        on_token: TokenCallback | None = None,
        generator: torch.Generator | None = None,
        **options: object,
    ) -> list[Completion]:
        """The family's text generation for each prompt: GLM-130B fills its blanks (``[MASK]``, ``[sMASK]``, or
        continues with ``[gMASK]``); ChatGLM continues the text. One :class:`Completion` per prompt.

        ``options`` are the family's generation options by name (GLM-130B: ``GenerationOptions`` fields such as
        ``sampling_strategy``, ``out_seq_length``, ``top_k``, ``num_beams``, ``seed``; chat families: ``ChatOptions``
        fields such as ``max_new_tokens``, ``do_sample``). ``on_token(step, tokens, parents)`` streams each step. Pass
        one ``generator`` to several calls to continue a single random stream (``seed`` is then unused).
        """
        prompts = check_prompts(prompts)
        return self.family.generate(
            self.runner, self.tokenizer, prompts, options, on_token, generator, self.banned_tokens
        )

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        generator: torch.Generator | None = None,
        on_text: Callable[[str], None] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        plain_content: bool = False,
        **options: object,
    ) -> dict[str, Any]:
        """The assistant's reply to OpenAI-style ``messages`` (``[{"role": "user", "content": ...}, ...]``), as the
        release's chat path builds the prompt, as ``{"role": "assistant", "content": reply}``; when the model calls a
        tool, ``"tool_calls"`` holds them in OpenAI's form (``{"type": "function", "function": {"name", "arguments"}}``,
        arguments a JSON string). Tool results go back as ``{"role": "tool", "content": ...}`` messages.

        ``tools`` is OpenAI's tool list (ChatGLM3, GLM-4); ``plain_content`` encodes every message's text as plain text,
        so a user who types ``<|user|>`` cannot forge a turn (a server turns it on). ``options`` are ``ChatOptions``
        fields (``max_length``, ``max_new_tokens``, ``do_sample``, ``top_p``, ``temperature``, ``top_k``, ``seed``;
        defaults: the release's ``chat()``); ``on_text(reply_so_far)`` streams as ``stream_chat`` does. A model
        without a chat format raises an InputError that says so.
        """
        reply = self.family.chat(
            self.runner,
            self.tokenizer,
            messages,
            options,
            generator,
            on_text,
            tools=tools,
            plain_content=plain_content,
            banned=self.banned_tokens,
        )
        out: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            out["tool_calls"] = [
                {"type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                for call in reply.tool_calls
            ]
        return out

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[b, s, vocab]`` as the reference computes them for ``input_ids [b, s]``.

        Without ``position_ids`` and ``attention_mask`` the family lays the ids out as a prompt (what generation
        feeds its first step: GLM's bidirectional context up to ``sop``, its blank positions after). Given, they are
        the reference's layouts: positions ``[b, s]`` (GLM-130B) or ``[b, 2, s]`` (ChatGLM: position ids, block
        position ids), and a bool mask ``[b or 1, 1, s, s]`` with True = blocked.
        """
        input_ids = index_tensor("input_ids", input_ids, 2)
        if (position_ids is None) != (attention_mask is None):
            raise InputError("pass both position_ids and attention_mask, or neither (the family's prompt layout)")
        if position_ids is None:
            position_ids, attention_mask = self.family.prompt_inputs(self.config, input_ids.cpu())
        else:
            position_ids = index_tensor("position_ids", position_ids, (2, 3))
            attention_mask = mask_tensor("attention_mask", attention_mask)
        check_layout(self.family.parts(self.config).position_rows, input_ids, position_ids, attention_mask)
        return forward_checked(self.runner, input_ids, position_ids, attention_mask)


def check_layout(rows: int, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """An InputError unless positions and mask have the reference's shapes for ``input_ids [b, s]``."""
    b, s = input_ids.shape
    wanted = (b, s) if rows == 1 else (b, rows, s)
    if tuple(position_ids.shape) != wanted:
        layout = "[batch, seq]" if rows == 1 else f"[batch, {rows}, seq]"
        raise InputError(
            f"input_ids and position_ids must be [batch, seq] and {layout}; got {tuple(input_ids.shape)} "
            f"and {tuple(position_ids.shape)}"
        )
    if (
        attention_mask.dtype != torch.bool
        or attention_mask.dim() != 4
        or attention_mask.shape[1:] != (1, s, s)
        or attention_mask.shape[0] not in (1, b)
    ):
        raise InputError(
            f"attention_mask must be bool [{b} or 1, 1, {s}, {s}] with True = blocked; got "
            f"{attention_mask.dtype} {tuple(attention_mask.shape)}"
        )


def forward_checked(
    runner: ModelRunner, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``runner.forward`` under inference mode, after checking ids and positions against its config."""
    config = runner.config
    if int(position_ids.max()) >= config.max_sequence_length or int(position_ids.min()) < 0:
        raise InputError(f"position ids must lie in [0, {config.max_sequence_length})")
    if int(input_ids.max()) >= config.vocab_size or int(input_ids.min()) < 0:
        raise InputError(f"token ids must lie in [0, {config.vocab_size})")
    device = runner.device
    with torch.inference_mode():
        return runner.forward(input_ids.to(device), position_ids.to(device), attention_mask.to(device))
