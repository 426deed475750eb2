"""A GLM model family: a small description plus the hooks the one graph, the loader and generation call.

Everything that differs between GLM-130B, ChatGLM-6B and the families after them lives behind this class, in the
family's own folder (``model/glm130b/``, ``model/chatglm/``): the block's parts, weight names and their tensor-parallel
split rules, the rotary tables, the positions and mask of a prompt, the tokenizer, and the generation/chat format.
Code outside those folders asks the family (``family_of(config)``) and never tests which one it has. How to add a
family: ``docs/families.md``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from glm_engine.errors import InputError
from glm_engine.model.parts import BlockParts

if TYPE_CHECKING:
    from glm_engine.backends.base import ModelRunner
    from glm_engine.generation.blank_filling import Completion
    from glm_engine.generation.masks import AlignedBatch, SequenceLayout
    from glm_engine.model.weights import WeightLayout, WeightReader
    from glm_engine.tokenizer.chat_tokenizer import ChatReply

TokenCallback = Callable[[int, list[list[int]], list[list[int]]], None]


@dataclass(frozen=True)
class ServingPrompt:
    """One generation a server runs, as the family builds it: the prompt ids, the ids that end it, and how the
    generated ids read (``text``: the reply so far, end tokens left out; ``reply``: a chat reply with tool calls)."""

    ids: list[int]
    end_token_ids: tuple[int, ...]
    text: Callable[[Sequence[int]], str]
    reply: Callable[[Sequence[int]], ChatReply] | None = None
    continues_text: bool = True  # its text is the completion's text so far (False: a blank, filled into the prompt)


# A completion's generations in order (one, or one per blank): each yields a prompt and is sent its generated ids;
# it returns the completion's text.
CompletionRounds = Generator[ServingPrompt, list[int], str]


@dataclass(frozen=True)
class BlankTokens:
    """The ids GLM's blank-infilling prompts are built from, in one model's vocabulary."""

    mask: int  # [MASK]: fill a short blank
    gmask: int  # [gMASK]: continue the text
    sop: int  # where generation starts
    pad: int
    text: range  # plain text ids (no specials, no reserved ranges)


@dataclass(frozen=True)
class TransformersBaseline:
    """How Hugging Face transformers runs a family, for ``glm-engine bench``'s baseline: the reference's modeling
    code a folder must carry (``trust_remote_code``), the ``auto_map`` that reaches it, and what to install."""

    code_files: tuple[str, ...]
    auto_map: Mapping[str, str]
    install_hint: str


class Family(ABC):
    """What one family of GLM models needs from the engine, and what it tells it."""

    name: ClassVar[str]  # short and stable: the ``model.type`` of exported folders, the registry key
    title: ClassVar[str]  # how messages name it ("GLM-130B")
    config_type: ClassVar[type]
    chat_model: ClassVar[bool] = False  # has a chat format (``Engine.chat``, ``glm-engine chat``)
    blank_infilling: ClassVar[bool] = False  # fills GLM's blanks with GLM-130B's options (``glm-engine run``, evaluate)
    causal_lm: ClassVar[bool] = False  # a plain causal LM after its tokenizer's prefix (evaluate's mul and lm tasks)
    transformers_baseline: ClassVar[TransformersBaseline | None] = None  # None: transformers has no class for it

    # --- the description ------------------------------------------------------------------------------------------
    @abstractmethod
    def parts(self, config: Any) -> BlockParts:
        """The block's parts for ``config``."""

    @abstractmethod
    def weight_layout(self, config: Any) -> WeightLayout:
        """Every weight's name, TP=1 shape and tensor-parallel split, which are quantizable, and the output's key."""

    @abstractmethod
    def rotary_tables(
        self, config: Any, dtype: torch.dtype, device: torch.device | str = "cpu", num_positions: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` rows per position as the reference builds them in ``dtype`` (built on the CPU, then moved,
        so every device starts from the same bits)."""

    @abstractmethod
    def blank_tokens(self, config: Any) -> BlankTokens:
        """The special ids and the plain-text id range of ``config``'s vocabulary."""

    @abstractmethod
    def conformance_config(self) -> Any:
        """A tiny config for the conformance model checks: 3 layers (layer scales 1..3), 4 heads (TP 1, 2, 4), widths
        that are multiples of 32 (groupwise INT4/INT8), a vocabulary of 512."""

    # --- configs --------------------------------------------------------------------------------------------------
    @abstractmethod
    def presets(self) -> Mapping[str, Any]:
        """Named configs (random weights are drawn for the small ones)."""

    @abstractmethod
    def config_to_dict(self, config: Any) -> dict[str, Any]:
        """The config as JSON data (what exported folders store)."""

    @abstractmethod
    def config_from_dict(self, data: dict[str, Any], source: str) -> Any:
        """The inverse of :meth:`config_to_dict`, validated; a ConfigError names ``source``."""

    @abstractmethod
    def exported_section(self, config: Any) -> dict[str, Any]:
        """The model part of an exported folder's ``genai_config.json``: the config in the family's own names, the
        special tokens, and ``position_ids_shape`` (the exporter moves it into the decoder's shapes)."""

    @abstractmethod
    def config_from_exported(self, section: dict[str, Any], source: str) -> Any:
        """The config an exported ``model`` section describes (the inverse of :meth:`exported_section`)."""

    # --- where weights come from ----------------------------------------------------------------------------------
    @abstractmethod
    def recognises(self, folder: Path) -> bool:
        """Whether ``folder`` is a checkpoint of this family (from its metadata alone)."""

    @abstractmethod
    def open_checkpoint(self, folder: Path, config: Any | None) -> WeightReader:
        """Open, describe and validate a checkpoint folder from metadata (no tensor data is read)."""

    @abstractmethod
    def state_dict_reader(self, state_dict: Mapping[str, Any], config: Any, source: str) -> WeightReader:
        """A reader over a state dict in memory (random weights, tests), validated against ``config``."""

    @abstractmethod
    def random_state_dict(self, config: Any, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
        """Seeded random weights under this family's names that keep activations O(1)."""

    # --- tokenizer and inputs -------------------------------------------------------------------------------------
    @abstractmethod
    def load_tokenizer(self, config: Any, path: str | Path | None, folder: Path | None, random: bool) -> Any:
        """The tokenizer: ``path`` (a file or its folder) if given, else the checkpoint ``folder``'s own; a random
        preset (``random``) falls back to the packaged test tokenizer."""

    def check_tokenizer(self, config: Any, tokenizer: Any, random: bool) -> None:
        """A TokenizerError when ``tokenizer`` cannot belong to ``config``'s vocabulary (ids beyond its rows, special
        ids elsewhere than the config says): such a pair loads and generates garbage (none by default). ``random``
        weights may pair with a smaller packaged tokenizer."""
        return None

    def generation_bans(self, config: Any, tokenizer: Any, random: bool) -> tuple[slice, ...]:
        """Id ranges never generated (none for real weights)."""
        return ()

    @abstractmethod
    def prompt_inputs(self, config: Any, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The positions and bool mask (True = blocked, ``[b, 1, s, s]``) the reference gives ``input_ids [b, s]``
        as a prompt (everything after a generation start token counts as generated)."""

    @abstractmethod
    def generation_batch(self, config: Any, prompts: Sequence[Sequence[int]], budgets: Sequence[int]) -> AlignedBatch:
        """Prompts ending with ``sop``, left-aligned as the family's generation aligns them, with positions and masks
        out to the longest prompt plus the largest of ``budgets`` (each row's count of tokens to generate)."""

    def sequence_layout(self, config: Any, prompt: Sequence[int]) -> SequenceLayout:
        """One prompt's positions and mask token by token (the serving core's per-sequence inputs), read off this
        family's :meth:`generation_batch` for the prompt and two generated tokens."""
        from glm_engine.generation.masks import layout_from_batch

        return layout_from_batch(self.generation_batch(config, [list(prompt)], [2]))

    @abstractmethod
    def continuation_inputs(
        self, config: Any, batch: int, context: int, total: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions ``[batch, (rows,) total]`` and mask ``[1, 1, total, total]`` for a ``context``-token prompt whose
        last token starts generation, followed by ``total - context`` generated tokens (bench's workloads)."""

    # --- generation -----------------------------------------------------------------------------------------------
    @abstractmethod
    def generate(
        self,
        runner: ModelRunner,
        tokenizer: Any,
        prompts: Sequence[str],
        options: dict[str, object],
        on_token: TokenCallback | None,
        generator: torch.Generator | None,
        banned: tuple[slice, ...],
    ) -> list[Completion]:
        """This family's text generation for each prompt (``options`` are its generation options by name)."""

    def chat(
        self,
        runner: ModelRunner,
        tokenizer: Any,
        messages: Sequence[Mapping[str, Any]],
        options: dict[str, object],
        generator: torch.Generator | None,
        on_text: Callable[[str], None] | None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        plain_content: bool = False,
        banned: tuple[slice, ...] = (),
    ) -> ChatReply:
        """The assistant's reply to OpenAI-style ``messages`` (``{"role", "content"}``, tool calls and results where
        the family has them) and ``tools`` (OpenAI's function list); ``plain_content`` encodes message text as plain
        text, so typed special tokens cannot forge a turn; ids in ``banned`` are never generated."""
        raise InputError(f"{self.title} is not a chat model: use generate() (glm-engine run) instead of chat")

    def check_messages(self, tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> None:
        """An InputError when ``messages`` are no conversation this family can render (a role it lacks ...), before
        anything is generated (default: no chat format at all)."""
        raise InputError(f"{self.title} is not a chat model: use generate() (glm-engine run) instead of chat")

    def serving_chat(
        self,
        config: Any,
        tokenizer: Any,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        plain_content: bool,
    ) -> ServingPrompt:
        """The generation that answers ``messages`` (the serving core's chat request), as :meth:`chat` builds it."""
        raise InputError(f"{self.title} is not a chat model: use completions instead of chat")

    def serving_completion(self, config: Any, tokenizer: Any, prompt: str) -> CompletionRounds:
        """The generations that complete ``prompt`` (the serving core's text request), as :meth:`generate` runs
        them; the text returned is what :meth:`generate` adds (or, for blanks, the prompt with them filled)."""
        raise InputError(f"{self.title} has no text completion")

    def chat_name(self, config: Any) -> str:
        """How the chat CLI names the model (its release's name)."""
        return self.title
