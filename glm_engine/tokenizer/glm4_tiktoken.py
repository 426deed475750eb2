"""GLM-4's remote-code tokenizer (``ChatGLM4Tokenizer``: ``tokenizer.model`` rank file + ``tokenizer_config.json``)
on the ``tiktoken`` package, without transformers and without network access.

Semantics reproduced from the release (glm-4-9b-chat, run under transformers 4.44+):

* **Ranks**: ``tokenizer.model`` is text, one ``base64(bytes) rank`` line per token (151,329 of them); tiktoken
  encodes each piece of GLM-4's split pattern with them. The 14 specials follow from ``len(ranks)`` in the release's
  order (``<|endoftext|>`` first).
* **Encoding**: transformers first cuts the text at the added tokens ``tokenizer_config.json`` lists (all 14 in the
  release), so a typed ``<|user|>`` becomes its id, and encodes the pieces between them as ordinary text; with special
  tokens added the ids start with ``[gMASK] <sop>``. A folder without a ``tokenizer_config.json`` is read as the
  release's (all 14 cut out). Text that is not valid Unicode (a lone surrogate) is an ``InputError``, where tiktoken
  would silently encode U+FFFD in its place (``text_input.py``).
* **Decoding** (``convert_tokens_to_string``): consecutive rank tokens are joined as bytes and decoded as UTF-8 with
  replacement characters; a special is written as its string in between, with no spaces (all 14 are special tokens
  of the release's config, so transformers' slow decode does not space them; transformers 5 never does).
  ``skip_special_tokens`` drops them. Ids past the vocabulary (the model's padding rows) render as nothing.
* **Chat**: the folder's Jinja ``chat_template`` rendered as transformers does and tokenized with the added-token
  cut and no prefix (``apply_chat_template``); stop ids are ``<|endoftext|>``, ``<|user|>`` and ``<|observation|>``
  (the config's ``eos_token_id`` list).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tiktoken

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
    added_tokens,
    eos_ids_of_folder,
    read_tokenizer_config,
    token_string,
)
from glm_engine.tokenizer.chat_tokenizer import ChatReply, ChatTokenizer, Message, Tool
from glm_engine.tokenizer.text_input import CHAT_PROMPT, check_ids, check_text

# GLM-4's split pattern (tokenization_chatglm.py).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
GLM4_SPECIALS = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
)
PREFIX = ("[gMASK]", "<sop>")
STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def read_ranks(path: Path) -> dict[bytes, int]:
    """The ``base64(bytes) rank`` lines of a GLM-4 ``tokenizer.model``; ranks must be 0..n-1 without gaps."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(
            f"cannot read {path} as GLM-4's rank file ({exc}); a binary tokenizer.model is ChatGLM2/3's SentencePiece "
            "model, load it with release 'chatglm2' or 'chatglm3'"
        ) from exc
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as exc:
            raise TokenizerError(f"{path}:{number}: expected 'base64 rank', got {line[:60]!r}") from exc
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps or repeats; the file is damaged")
    if not all(bytes([b]) in ranks for b in range(256)):
        raise TokenizerError(f"{path}: not every single byte has a rank, so some text could not be encoded")
    return ranks


class GLM4TiktokenTokenizer(ChatTokenizer):
    """GLM-4's remote tokenizer: tiktoken ranks, 14 specials after them, the folder's chat template."""

    def __init__(
        self,
        rank_file: str | Path,
        config: Mapping[str, Any],
        added: Iterable[AddedToken] | None = None,
        chat_template: Any = None,
        stop_ids: Sequence[int] | None = None,
    ) -> None:
        self.rank_file = Path(rank_file)
        ranks = read_ranks(self.rank_file)
        self.special_ids = {name: len(ranks) + i for i, name in enumerate(GLM4_SPECIALS)}
        self._special_names = {token_id: name for name, token_id in self.special_ids.items()}
        self._decoder = {rank: token for token, rank in ranks.items()}
        self._encoding = tiktoken.Encoding(
            name=f"glm4:{self.rank_file}", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={}
        )
        self.name = f"GLM-4 tiktoken ({self.rank_file.name})"
        self.vocab_size = len(ranks) + len(GLM4_SPECIALS)
        self.eos_id = self.special_ids["<|endoftext|>"]
        pad = token_string(config.get("pad_token"))
        self.pad_id = self.special_ids.get(pad, self.eos_id) if pad else self.eos_id
        self.stop_ids = tuple(stop_ids) if stop_ids else tuple(self.special_ids[name] for name in STOP_TOKENS)
        added = self._check_added(list(added) if added is not None else None)
        self._splitter = AddedTokenSplitter(added)
        self._added_strings = [token.content for token in added]
        self._chat_template = chat_template
        self._template_variables = {
            key: token_string(config[key]) for key in NAMED_SPECIAL_TOKENS if token_string(config.get(key))
        }

    @classmethod
    def from_files(cls, file: Path, folder: Path) -> GLM4TiktokenTokenizer:
        """``file`` is the rank file; the folder's ``tokenizer_config.json`` gives the added tokens, the pad token
        and the chat template (``chat_template.jinja`` takes precedence), ``config.json`` the stop ids."""
        config = read_tokenizer_config(folder)
        template_file = folder / CHAT_TEMPLATE_FILE
        template = template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template")
        added = added_tokens(config) if "added_tokens_decoder" in config else None
        return cls(file, config, added=added, chat_template=template, stop_ids=eos_ids_of_folder(folder))

    def _check_added(self, added: list[AddedToken] | None) -> list[AddedToken]:
        """The config's added tokens (the release's 14 when it lists none), each at the id the ranks imply."""
        if not added:
            return [AddedToken(name, token_id) for name, token_id in self.special_ids.items()]
        for token in added:
            if self.special_ids.get(token.content) != token.id:
                raise TokenizerError(
                    f"tokenizer_config.json lists {token.content!r} at id {token.id}, but {self.rank_file.name} puts "
                    f"GLM-4's specials at {self.eos_id}..{self.vocab_size - 1}: the files come from different releases"
                )
        return added

    @property
    def prefix(self) -> list[int]:
        return [self.special_ids[name] for name in PREFIX]

    def _encode_cut(self, text: str, shield: ContentShield | None = None) -> list[int]:
        """Ids of ``text`` cut at the added tokens, the pieces between them encoded as ordinary text."""
        ids: list[int] = []
        for part in self._splitter.split(text):
            if isinstance(part, AddedToken):
                ids.append(part.id)
            else:
                for piece in shield.restore(part) if shield else [part]:
                    ids.extend(self._encoding.encode_ordinary(piece))
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return (self.prefix if add_special_tokens else []) + self._encode_cut(check_text(text))

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        text, pending = [], bytearray()
        for token_id in check_ids(ids):
            if token_id in self._decoder:
                pending += self._decoder[token_id]
            elif token_id in self._special_names and not skip_special_tokens:
                text.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
                text.append(self._special_names[token_id])
        text.append(pending.decode("utf-8", errors="replace"))
        return "".join(text)

    def _template(self, has_tools: bool) -> str:
        if self._chat_template is None:
            raise TokenizerError(
                f"{self.rank_file.parent} has no chat_template (tokenizer_config.json or {CHAT_TEMPLATE_FILE}); "
                "restore the release's tokenizer_config.json"
            )
        return select_chat_template(self._chat_template, has_tools, str(self.rank_file.parent))

    def apply_chat_template(
        self,
        messages: Sequence[Message],
        tools: Sequence[Tool] | None = None,
        add_generation_prompt: bool = True,
        plain_content: bool = False,
    ) -> list[int]:
        """``tokenizer.apply_chat_template(messages, add_generation_prompt=...)`` of the release: the template
        rendered (tools placed where the template reads them) and tokenized without a prefix."""
        source = self._template(bool(tools))
        conversation, tools_variable = template_conversation(source, messages, tools)
        shield = ContentShield(self._added_strings) if plain_content else None
        if shield is not None:
            conversation, tools_variable = shield.shield(conversation), shield.shield(tools_variable)
        text = render_chat_template(
            source, conversation, tools_variable, add_generation_prompt, self._template_variables
        )
        return self._encode_cut(check_text(text, CHAT_PROMPT), shield)

    def parse_reply(self, ids: Sequence[int], tools: Sequence[Tool] | None = None) -> ChatReply:
        """The reply's assistant turns (split at ``<|assistant|>``), each read by GLM-4's OpenAI server rule."""
        turns: list[list[int]] = [[]]
        for token_id in ids:
            if int(token_id) == self.special_ids["<|assistant|>"]:
                turns.append([])
            else:
                turns[-1].append(int(token_id))
        return parse_glm4_reply([self.decode(turn, skip_special_tokens=True) for turn in turns], tools)
