"""The check every tokenizer makes before its library sees the text: a ``str`` that is valid Unicode.

A lone surrogate (half of a UTF-16 pair, or a byte that was not UTF-8 read with ``errors="surrogateescape"``) has no
UTF-8 form: SentencePiece and ``tokenizers`` fail on it with untyped pybind/Rust errors, and tiktoken silently
replaces it with U+FFFD. Every tokenizer here refuses it with an :class:`InputError` instead, and the Python API
(``engine/arguments.py``) and the CLI's typed lines use the same test before a prompt reaches a tokenizer.
"""

from __future__ import annotations

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
