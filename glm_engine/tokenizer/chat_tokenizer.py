"""The one interface every chat tokenizer of the GLM line offers to the model families.

A family does not care whether its release tokenizes with SentencePiece (ChatGLM2/3), tiktoken (GLM-4's remote code)
or a ``tokenizer.json`` (transformers' native GLM-4 folders): it asks a :class:`ChatTokenizer` for the prompt ids of
an OpenAI-style conversation, the ids that end a reply, and the reply's text and tool calls. Each implementation maps
those requests onto its release's own chat format and reproduces the release's ids.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# An OpenAI-style message: {"role": ..., "content": ..., optional "tool_calls" / "tool_call_id" / "name"}.
Message = Mapping[str, Any]
# An OpenAI tools entry: {"type": "function", "function": {"name", "description", "parameters"}}.
Tool = Mapping[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asked for; ``arguments`` is a JSON object as a string (OpenAI's convention)."""

    name: str
    arguments: str


@dataclass(frozen=True)
class ChatReply:
    """What a reply says: its text, the tool calls it makes, and the release's metadata line when there is one
    (ChatGLM3 names a tool or ``interpreter`` there; empty otherwise)."""

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    metadata: str = ""


class ChatTokenizer(ABC):
    """Text and conversations to ids and back, as one GLM release does it.

    Attributes every implementation sets:

    * ``name``: what it is, for messages and logs (e.g. ``"ChatGLM3 SentencePiece (tokenizer.model)"``).
    * ``vocab_size``: how many ids it can produce (the model's padded vocabulary may be larger).
    * ``eos_id``, ``pad_id``: the release's end-of-text and padding ids.
    * ``stop_ids``: the ids that end a reply in the release's chat path (a reply stops at the first of them).
    * ``files``: the files it was read from by the names the release gives them, the main one first
      (``load_chat_tokenizer`` sets it; an export copies them under those names).
    """

    name: str
    vocab_size: int
    eos_id: int
    pad_id: int
    stop_ids: tuple[int, ...]
    files: dict[str, Path]

    @classmethod
    @abstractmethod
    def from_files(cls, file: Path, folder: Path) -> ChatTokenizer:
        """The tokenizer from its release's files: ``file`` is the main tokenizer file, ``folder`` the folder holding
        it and its companions (``tokenizer_config.json``, ``config.json``, ...)."""

    @abstractmethod
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids of ``text`` as the release's ``tokenizer.encode(text, add_special_tokens=...)`` gives them (with the
        release's prefix when ``add_special_tokens``); a ``text`` that is not a valid Unicode ``str`` is an
        :class:`~glm_engine.errors.InputError`."""

    @abstractmethod
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` as the release's ``tokenizer.decode`` renders it; ids outside the vocabulary (padding
        rows of the model) render as nothing, and an id that is not an integer is an
        :class:`~glm_engine.errors.InputError`."""

    @abstractmethod
    def apply_chat_template(
        self,
        messages: Sequence[Message],
        tools: Sequence[Tool] | None = None,
        add_generation_prompt: bool = True,
        plain_content: bool = False,
    ) -> list[int]:
        """The ids the model is fed for ``messages`` (and ``tools``), as the release's own chat path builds them.

        With ``plain_content`` the text of messages and tools is encoded as plain text, so typing a special token's
        string (``<|user|>``) cannot forge a turn: such a string is encoded as ordinary text on its own (as
        transformers' ``sanitize_control_tokens`` does); the role tokens and the template's own structure stay
        special.
        Invalid conversations (a role the release lacks, a malformed tool call) raise :class:`InputError`.
        """

    @abstractmethod
    def parse_reply(self, ids: Sequence[int], tools: Sequence[Tool] | None = None) -> ChatReply:
        """The reply in the generated ``ids`` (stop token excluded): its text, and the tool calls it makes when
        ``tools`` were offered, read as the release's own code reads them. Never raises on model output: anything
        that is not a well-formed call is returned as plain content."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}: {self.vocab_size} ids, stop {list(self.stop_ids)}>"
