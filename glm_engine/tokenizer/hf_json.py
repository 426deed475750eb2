"""Tokenizers of transformers-native folders (glm-4-9b-chat-hf, GLM-4-*-0414): ``tokenizer.json`` through the
``tokenizers`` package, ``tokenizer_config.json`` for the special tokens and the chat template.

transformers' ``AutoTokenizer`` on such a folder is a thin layer over the same ``tokenizers`` object, so ids come
out identical when that layer is reproduced:

* **encode**: ``tokenizer.json`` does everything (its added tokens are cut out first, so a typed ``<|user|>`` is the
  special id; its post-processor adds the release's prefix when special tokens are added).
* **decode**: ``tokenizer.json``'s decoder; ``clean_up_tokenization_spaces`` from the config is applied as
  transformers 5 applies it: never to a BPE model (the GLM folders set it false anyway).
* **chat**: the folder's template (``chat_template.jinja`` beside the config, else the config's ``chat_template``)
  rendered as transformers does, with the config's named special tokens as variables, tokenized without special
  tokens added.
* **stop ids**: the folder's ``generation_config.json`` / ``config.json`` ``eos_token_id`` (the loader reads them),
  else the config's eos token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import tokenizers

from glm_engine.errors import TokenizerError
from glm_engine.generation.chat_template import (
    NAMED_SPECIAL_TOKENS,
    render_chat_template,
    select_chat_template,
    template_conversation,
)
from glm_engine.generation.tool_calls import parse_glm4_reply
from glm_engine.tokenizer.added_tokens import (
    AddedToken,
    AddedTokenSplitter,
    ContentShield,
    eos_ids_of_folder,
    read_tokenizer_config,
    token_string,
)
from glm_engine.tokenizer.chat_tokenizer import ChatReply, ChatTokenizer, Message, Tool
from glm_engine.tokenizer.cleanup import clean_up_tokenization
from glm_engine.tokenizer.text_input import CHAT_PROMPT, check_ids, check_text

TOKENIZER_JSON = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
ASSISTANT_TOKEN = "<|assistant|>"


def _load(path: Path) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception subclass for every parse failure
        raise TokenizerError(f"cannot load {path}: {exc}. Restore tokenizer.json from the release.") from exc


class HFJsonTokenizer(ChatTokenizer):
    """A native folder's ``tokenizer.json`` and ``tokenizer_config.json``, as ``AutoTokenizer`` reads them."""

    def __init__(self, folder: str | Path, stop_ids: Sequence[int] | None = None) -> None:
        self.folder = Path(folder)
        self._tokenizer = _load(self.folder / TOKENIZER_JSON)
        config = read_tokenizer_config(self.folder)
        self.name = f"tokenizer.json ({self.folder.name})"
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self._template_variables = {
            key: token_string(config[key]) for key in NAMED_SPECIAL_TOKENS if token_string(config.get(key))
        }
        self.eos_id = self._token_id(self._template_variables.get("eos_token"), stop_ids)
        pad = self._template_variables.get("pad_token")
        self.pad_id = self._token_id(pad, stop_ids) if pad else self.eos_id
        self.stop_ids = tuple(stop_ids) if stop_ids else (self.eos_id,)
        self._clean_up = bool(config.get("clean_up_tokenization_spaces", False)) and not isinstance(
            self._tokenizer.model, tokenizers.models.BPE
        )
        added = [
            AddedToken(token.content, token_id, token.lstrip, token.rstrip, token.special)
            for token_id, token in self._tokenizer.get_added_tokens_decoder().items()
        ]
        self._splitter = AddedTokenSplitter(added)
        self._added_strings = [token.content for token in added]
        template_file = self.folder / CHAT_TEMPLATE_FILE
        self._chat_template = (
            template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template")
        )

    @classmethod
    def from_files(cls, file: Path, folder: Path) -> HFJsonTokenizer:
        """``file`` is ``tokenizer.json``; the stop ids come from the folder's generation or model config."""
        return cls(folder, stop_ids=eos_ids_of_folder(folder))

    def _token_id(self, token: str | None, stop_ids: Sequence[int] | None) -> int:
        token_id = self._tokenizer.token_to_id(token) if token else None
        if token_id is not None:
            return token_id
        if stop_ids:
            return int(stop_ids[0])
        raise TokenizerError(
            f"{self.folder / 'tokenizer_config.json'} names no eos_token that {TOKENIZER_JSON} knows ({token!r}); "
            "restore the release's tokenizer_config.json"
        )

    @cached_property
    def _plain(self) -> tokenizers.Tokenizer:
        """A second copy that encodes special strings as text (for ``plain_content``), loaded when first needed."""
        plain = _load(self.folder / TOKENIZER_JSON)
        plain.encode_special_tokens = True
        return plain

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(check_text(text), add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        known = [token_id for token_id in check_ids(ids) if 0 <= token_id < self.vocab_size]
        text = self._tokenizer.decode(known, skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self._clean_up else text

    def apply_chat_template(
        self,
        messages: Sequence[Message],
        tools: Sequence[Tool] | None = None,
        add_generation_prompt: bool = True,
        plain_content: bool = False,
    ) -> list[int]:
        """``AutoTokenizer.apply_chat_template(messages, tools=..., add_generation_prompt=...)`` of the folder."""
        if self._chat_template is None:
            raise TokenizerError(
                f"{self.folder} has no chat template ({CHAT_TEMPLATE_FILE} or tokenizer_config.json chat_template); "
                "it is a base model, or the file is missing: restore it from the release"
            )
        source = select_chat_template(self._chat_template, bool(tools), str(self.folder))
        conversation, tools_variable = template_conversation(source, messages, tools)
        if not plain_content:
            text = render_chat_template(
                source, conversation, tools_variable, add_generation_prompt, self._template_variables
            )
            return list(self._tokenizer.encode(check_text(text, CHAT_PROMPT), add_special_tokens=False).ids)
        shield = ContentShield(self._added_strings)
        text = render_chat_template(
            source,
            shield.shield(conversation),
            shield.shield(tools_variable),
            add_generation_prompt,
            self._template_variables,
        )
        ids: list[int] = []
        for part in self._splitter.split(check_text(text, CHAT_PROMPT)):
            if isinstance(part, AddedToken):
                ids.append(part.id)
            else:
                for piece in shield.restore(part):
                    ids.extend(self._plain.encode(piece, add_special_tokens=False).ids)
        return ids

    def parse_reply(self, ids: Sequence[int], tools: Sequence[Tool] | None = None) -> ChatReply:
        """Assistant turns split at ``<|assistant|>`` (when the vocabulary has it), read by GLM-4's server rule."""
        assistant = self._tokenizer.token_to_id(ASSISTANT_TOKEN)
        turns: list[list[int]] = [[]]
        for token_id in ids:
            if assistant is not None and int(token_id) == assistant:
                turns.append([])
            else:
                turns[-1].append(int(token_id))
        return parse_glm4_reply([self.decode(turn, skip_special_tokens=True) for turn in turns], tools)
