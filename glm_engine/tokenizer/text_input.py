"""The checks every tokenizer makes before its library sees its input: text is a ``str`` that is valid Unicode, and
ids to decode are integers.

A lone surrogate (half of a UTF-16 pair, or a byte that was not UTF-8 read with ``errors="surrogateescape"``) has no
UTF-8 form: SentencePiece and ``tokenizers`` fail on it with untyped pybind/Rust errors, and tiktoken silently
replaces it with U+FFFD. Every tokenizer here refuses it with an :class:`InputError` instead, and the Python API
(``engine/arguments.py``) and the CLI's typed lines use the same test before a prompt reaches a tokenizer.

``decode`` takes any integers (ids outside the vocabulary decode to nothing or a marker, never an error), but only
integers: ``int()`` would silently turn ``1.5`` or ``True`` into id 1 and the bytes ``b"ab"`` into ids 97 and 98.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

from glm_engine.errors import InputError

# What a chat template's output is called in the message: the user wrote the messages, not the prompt.
CHAT_PROMPT = "the rendered chat prompt (messages and tools)"


def lone_surrogate_at(text: str) -> int | None:
    """Index of the first lone surrogate in ``text`` (the first character without a UTF-8 form), None if none."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def is_valid_text(text: str) -> bool:
    """Whether ``text`` encodes to UTF-8 (no lone surrogates: bytes that were not UTF-8, or half of a pair)."""
    return lone_surrogate_at(text) is None


def check_text(text: Any, what: str = "text to encode") -> str:
    """``text`` itself when it is a ``str`` with a UTF-8 form, else an :class:`InputError` naming ``what``."""
    if not isinstance(text, str):
        hint = ": decode bytes first" if isinstance(text, (bytes, bytearray)) else ""
        raise InputError(f"{what} must be a str, got {type(text).__name__}{hint}")
    index = lone_surrogate_at(text)
    if index is not None:
        raise InputError(
            f"{what} is not valid Unicode: it holds a lone surrogate {text[index]!r} at index {index} (half of a "
            "UTF-16 pair, or a byte that was not UTF-8); decode the input with errors='replace'"
        )
    return text


def _as_id(value: Any) -> int | None:
    """``value`` as a Python int when it is an integer (a bool is not one), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_ids(ids: Any, what: str = "ids to decode") -> list[int]:
    """``ids`` as a list of Python ints (ints, NumPy integers and one-element integer tensors are accepted), else an
    :class:`InputError` naming ``what`` and the first id that is not an integer."""
    if isinstance(ids, (str, bytes, bytearray)) or not isinstance(ids, Iterable):
        raise InputError(f"{what} must be a sequence of integers, got {type(ids).__name__}")
    try:
        items = list(ids)
    except TypeError as exc:  # a 0-d tensor is Iterable but refuses to iterate
        raise InputError(f"{what} must be a sequence of integers, got {type(ids).__name__}: {exc}") from None
    checked: list[int] = []
    for index, token_id in enumerate(items):
        as_int = _as_id(token_id)
        if as_int is None:
            raise InputError(f"{what}: item {index} must be an integer, got {type(token_id).__name__} {token_id!r}")
        checked.append(as_int)
    return checked
