"""Reading task data: the reference's jsonl formats and raw language-model files (docs/evaluation.md#data-formats).

Text fields are tokenized here, once: ``inputs_pretokenized`` with the prompt rules (a written ``[MASK]`` or
``[gMASK]`` becomes the mask token, each segment tokenized on its own), choices and targets as plain text. Id lists
under ``inputs`` / ``choices`` / ``targets`` take precedence over the text, as in the reference. Every bad line is a
:class:`~glm_engine.errors.TaskError` naming ``file:line``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glm_engine.errors import TaskError
from glm_engine.tokenizer import GLMTokenizer


class DataWarning(UserWarning):
    """Data that is skipped, as the reference skips it (``glm-engine evaluate`` prints it as a note)."""


@dataclass(frozen=True)
class MultipleChoiceExample:
    text: list[int]
    choices: list[list[int]]
    label: int
    where: str = field(default="", compare=False)  # file:line, for messages


@dataclass(frozen=True)
class GenerationExample:
    text: list[int]
    targets: list[list[int]]
    target_texts: list[str]  # the targets as the tokenizer decodes them: what predictions are compared with
    where: str = field(default="", compare=False)  # file:line, for messages


@dataclass(frozen=True)
class Document:
    """One language-modelling document and the units its scores are normalized by."""

    tokens: list[int]
    num_words: int  # the reference's ``len(raw_text.strip().split(" "))``
    num_bytes: int  # UTF-8 bytes of the raw text (bits per byte)
    subset: str = ""  # Pile's ``meta.pile_set_name``


def read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file:line, object)`` for every non-blank line of a jsonl file."""
    text = read_text(path)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{where}: not valid JSON: {exc.msg}") from None
        if not isinstance(item, dict):
            raise TaskError(f"{where}: each line must be a JSON object, got {type(item).__name__}")
        yield where, item


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskError(f"{path}: data file not found") from None
    except UnicodeDecodeError as exc:
        raise TaskError(f"{path}: not UTF-8 text: {exc}") from None


def _ids(value: Any, where: str, key: str, vocab_size: int) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise TaskError(f"{where}: {key!r} must be a list of token ids, got {value!r}")
    bad = [t for t in value if not 0 <= t < vocab_size]
    if bad:
        raise TaskError(f"{where}: {key!r} holds id {bad[0]}, outside the model's vocabulary [0, {vocab_size})")
    return value


def _text(item: dict[str, Any], key: str, where: str) -> str:
    if key not in item:
        raise TaskError(f"{where}: missing {key!r} (or the id list {key.removesuffix('_pretokenized')!r})")
    if not isinstance(item[key], str):
        raise TaskError(f"{where}: {key!r} must be a string, got {item[key]!r}")
    return item[key]


def _input_tokens(item: dict[str, Any], where: str, tokenizer: GLMTokenizer, vocab_size: int) -> list[int]:
    if "inputs" in item:
        tokens = _ids(item["inputs"], where, "inputs", vocab_size)
    else:
        tokens = tokenizer.tokenize_prompt(_text(item, "inputs_pretokenized", where))
    if not tokens:
        raise TaskError(f"{where}: the input is empty")
    return tokens


def _id_lists(item: dict[str, Any], key: str, where: str, tokenizer: GLMTokenizer, vocab_size: int) -> list[list[int]]:
    """``key`` as id lists, or ``key_pretokenized`` (a list of strings) tokenized; none may be empty."""
    if key in item:
        values = item[key]
        if not isinstance(values, list) or not values:
            raise TaskError(f"{where}: {key!r} must be a non-empty list of id lists")
        lists = [_ids(v, where, key, vocab_size) for v in values]
    else:
        text_key = f"{key}_pretokenized"
        values = item.get(text_key)
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise TaskError(f"{where}: need {text_key!r} (a non-empty list of strings) or {key!r} (id lists)")
        lists = [tokenizer.encode(v) for v in values]
    for index, tokens in enumerate(lists):
        if not tokens:
            raise TaskError(f"{where}: {key} entry {index} is empty (it has no tokens to score)")
    return lists


def read_multiple_choice(path: Path, tokenizer: GLMTokenizer, vocab_size: int) -> list[MultipleChoiceExample]:
    """``{"inputs_pretokenized", "choices_pretokenized", "label"}`` lines (or ``inputs`` / ``choices`` ids)."""
    examples = []
    for where, item in read_jsonl(path):
        text = _input_tokens(item, where, tokenizer, vocab_size)
        choices = _id_lists(item, "choices", where, tokenizer, vocab_size)
        label = item.get("label")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
            raise TaskError(f"{where}: 'label' must be the index of the right choice (0..{len(choices) - 1})")
        examples.append(MultipleChoiceExample(text, choices, label, where))
    return examples


def read_generation(path: Path, tokenizer: GLMTokenizer, vocab_size: int) -> list[GenerationExample]:
    """``{"inputs_pretokenized", "targets_pretokenized": [...]}`` lines (or ``inputs`` / ``targets`` ids)."""
    examples = []
    for where, item in read_jsonl(path):
        text = _input_tokens(item, where, tokenizer, vocab_size)
        targets = _id_lists(item, "targets", where, tokenizer, vocab_size)
        examples.append(GenerationExample(text, targets, [tokenizer.decode(t) for t in targets], where))
    return examples


def word_count(raw_text: str) -> int:
    """The reference's ``num_original_tokens``: pieces between single spaces of the stripped text."""
    return len(raw_text.strip().split(" "))


def read_raw_document(path: Path, tokenizer: GLMTokenizer) -> Document:
    """A WikiText/PTB-style file: the whole file is one document, tokenized at once."""
    raw = read_text(path)
    if not raw.strip():
        raise TaskError(f"{path}: the document is empty")
    return Document(tokenizer.encode(raw), word_count(raw), len(raw.encode("utf-8")))


def read_pile(path: Path, tokenizer: GLMTokenizer, vocab_size: int) -> list[Document]:
    """Pile-style lines ``{"text": [ids], "text_pretokenized": str, "meta": {"pile_set_name": str}}``; the raw
    text is required (its UTF-8 bytes are what bits per byte divides by), the ids are optional. A document without
    tokens is skipped, as the reference's Pile dataset skips it, with one :class:`DataWarning` per file."""
    documents = []
    skipped = []
    for where, item in read_jsonl(path):
        raw = _text(item, "text_pretokenized", where)
        tokens = _ids(item["text"], where, "text", vocab_size) if "text" in item else tokenizer.encode(raw)
        if not tokens:
            skipped.append(where.rpartition(":")[2])
            continue
        meta = item.get("meta", {})
        subset = meta.get("pile_set_name") if isinstance(meta, dict) else None
        if not isinstance(subset, str) or not subset:
            raise TaskError(f"{where}: need meta.pile_set_name (the subset the document's score is reported under)")
        documents.append(Document(tokens, word_count(raw), len(raw.encode("utf-8")), subset))
    if skipped:
        lines = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(
            f"{path}: skipped {len(skipped)} empty document(s) (line {lines}), as the reference does",
            DataWarning,
            stacklevel=2,
        )
    return documents
