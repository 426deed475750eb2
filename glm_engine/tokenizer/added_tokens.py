"""Special-token strings in text: which ones a folder declares, how text splits around them, and how user text is kept
from forming them.

transformers' slow and fast tokenizers cut the text at every *added token* of ``tokenizer_config.json`` before the
vocabulary sees it (leftmost match, longest at one position; an ``lstrip``/``rstrip`` token also swallows the
whitespace on that side) and encode each piece on its own. That is how a typed ``<|user|>`` becomes GLM-4's role id,
and why a release's ``tokenizer_config.json`` decides which strings are special. :class:`AddedTokenSplitter` does that
cut. :class:`ContentShield` is the other direction: it hides the special strings inside user-supplied text behind
private-use placeholders while a chat template is rendered, and gives the text back afterwards, so that only the
template's own special tokens are encoded as specials.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glm_engine.errors import TokenizerError

TOKENIZER_CONFIG = "tokenizer_config.json"
# Private-use code points that bracket a placeholder's number; user text holding them is shielded too.
_OPEN, _CLOSE = "\ue000", "\ue001"
_PLACEHOLDER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")


@dataclass(frozen=True)
class AddedToken:
    """One ``added_tokens_decoder`` entry: its string, id, whitespace stripping and whether it is special."""

    content: str
    id: int
    lstrip: bool = False
    rstrip: bool = False
    special: bool = True


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; anything else is a :class:`TokenizerError` naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"cannot read {path}: {exc}. Restore it from the model's release.") from exc
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} holds a JSON {type(data).__name__}, not an object; restore it from the release")
    return data


def read_tokenizer_config(folder: Path) -> dict[str, Any]:
    """``tokenizer_config.json`` of ``folder``, or an empty dict when the folder has none."""
    path = folder / TOKENIZER_CONFIG
    return read_json(path) if path.is_file() else {}


def eos_ids_of_folder(folder: Path) -> tuple[int, ...] | None:
    """``eos_token_id`` of the folder's ``generation_config.json``, else its ``config.json``, as a tuple of ids (None
    when neither says): the ids a release's ``generate`` stops at."""
    for name in ("generation_config.json", "config.json"):
        if (folder / name).is_file():
            value = read_json(folder / name).get("eos_token_id")
            ids = [value] if isinstance(value, int) else value
            if isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                return tuple(ids)
    return None


def added_tokens(config: Mapping[str, Any], source: str = TOKENIZER_CONFIG) -> list[AddedToken]:
    """The ``added_tokens_decoder`` entries of a tokenizer config, by id."""
    table = config.get("added_tokens_decoder") or {}
    if not isinstance(table, Mapping):
        raise TokenizerError(f"{source}: added_tokens_decoder must be an object of id -> token")
    tokens = []
    for key, entry in table.items():
        try:
            token_id = int(key)
            content = entry["content"] if isinstance(entry, Mapping) else str(entry)
        except (KeyError, TypeError, ValueError) as exc:
            raise TokenizerError(f"{source}: bad added_tokens_decoder entry {key!r}: {entry!r}") from exc
        flags = entry if isinstance(entry, Mapping) else {}
        tokens.append(
            AddedToken(
                content=content,
                id=token_id,
                lstrip=bool(flags.get("lstrip", False)),
                rstrip=bool(flags.get("rstrip", False)),
                special=bool(flags.get("special", True)),
            )
        )
    return sorted(tokens, key=lambda token: token.id)


def token_string(value: Any) -> str | None:
    """A special-token setting of a tokenizer config (a string or an AddedToken-like object) as its string."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class AddedTokenSplitter:
    """Cuts text at added-token strings as transformers does before tokenizing."""

    def __init__(self, tokens: Iterable[AddedToken]) -> None:
        self.tokens = {token.content: token for token in tokens if token.content}
        longest_first = sorted(self.tokens, key=lambda s: (-len(s), s))
        self._pattern = re.compile("|".join(re.escape(s) for s in longest_first)) if longest_first else None

    def split(self, text: str) -> list[str | AddedToken]:
        """``text`` as alternating plain pieces (never empty) and added tokens, in order."""
        if self._pattern is None:
            return [text] if text else []
        parts: list[str | AddedToken] = []
        position, strip_next = 0, False
        for match in self._pattern.finditer(text):
            token = self.tokens[match.group()]
            piece = text[position : match.start()]
            if strip_next:
                piece = piece.lstrip()
            if token.lstrip:
                piece = piece.rstrip()
            if piece:
                parts.append(piece)
            parts.append(token)
            position, strip_next = match.end(), token.rstrip
        tail = text[position:]
        if strip_next:
            tail = tail.lstrip()
        if tail:
            parts.append(tail)
        return parts


class ContentShield:
    """Hides special-token strings in user-supplied values while a template renders, and restores them after.

    :meth:`shield` copies messages/tools with every occurrence of a special string (and of the placeholder brackets
    themselves) in string values replaced by a numbered private-use placeholder; dictionary keys, which templates
    read as structure, are kept. After rendering, the caller splits the text at the specials that remain (the
    template's own) and passes each plain piece through :meth:`restore`, encoding the pieces it returns as ordinary
    text.
    """

    def __init__(self, specials: Iterable[str]) -> None:
        hidden = sorted({s for s in specials if s} | {_OPEN, _CLOSE}, key=lambda s: (-len(s), s))
        self._pattern = re.compile("|".join(re.escape(s) for s in hidden))
        self._originals: list[str] = []

    def shield(self, value: Any) -> Any:
        """A copy of ``value`` (nested dicts, lists, tuples, strings) with special strings hidden."""
        if isinstance(value, str):
            return self._pattern.sub(self._hide, value)
        if isinstance(value, Mapping):
            return {key: self.shield(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.shield(item) for item in value)
        return value

    def _hide(self, match: re.Match[str]) -> str:
        self._originals.append(match.group())
        return f"{_OPEN}{len(self._originals) - 1}{_CLOSE}"

    def restore(self, text: str) -> list[str]:
        """``text`` with the hidden strings given back, as the pieces to encode one by one: every hidden special
        string is a piece of its own (encoded as plain text with a word boundary on both sides, as transformers'
        ``sanitize_control_tokens`` encodes it); a hidden bracket character rejoins the text around it."""
        pieces, current, position = [], "", 0
        for match in _PLACEHOLDER.finditer(text):
            current += text[position : match.start()]
            position = match.end()
            index = int(match.group(1))
            original = self._originals[index] if index < len(self._originals) else match.group()
            if original in (_OPEN, _CLOSE) or index >= len(self._originals):
                current += original
                continue
            pieces.extend(p for p in (current, original) if p)
            current = ""
        current += text[position:]
        if current:
            pieces.append(current)
        return pieces
