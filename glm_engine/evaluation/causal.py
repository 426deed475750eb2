"""Task encodings for causal models (ChatGLM2/3, GLM-4), which have no blanks to fill (docs/evaluation.md).

A causal release reads text after its tokenizer's prefix (``[gMASK]<sop>`` for ChatGLM2/3 and GLM-4, as their
``tokenizer(text)`` adds it) with a causal mask and positions ``0 ..``, as every causal-LM harness scores it:

* **multiple choice**: ``prefix + text`` then, per choice, ``choice[:-1]`` continuing the positions after the context,
  each block causal within itself, blind to the other choices and seeing the whole context; a choice's score is the
  sum of its tokens' log-probabilities, the first token predicted by the context's last row.
* **language modelling**: windows of ``prefix + context + text[:-1]``; each scores its ``text`` (the first window all
  of its tokens, later ones the next ``generation_length`` after ``window - generation_length`` tokens of context).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from glm_engine.errors import TaskError
from glm_engine.evaluation.batching import Sample
from glm_engine.evaluation.multiple_choice import ChoiceSample
from glm_engine.evaluation.perplexity import Window


class ContentTokenizer:
    """A chat tokenizer seen by the task readers: text to content ids (no release prefix), ids back to text."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.prefix: list[int] = tokenizer.encode("", add_special_tokens=True)
        self.pad_id: int = tokenizer.pad_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def tokenize_prompt(self, text: str) -> list[int]:
        return self.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def causal_choice_room(prefix: Sequence[int], choices: Sequence[Sequence[int]], max_length: int) -> int:
    """Text tokens an example keeps: ``max_length`` minus the prefix and every choice's tokens but its last."""
    if not choices or any(len(c) == 0 for c in choices):
        raise TaskError("every multiple-choice example needs at least one choice and no empty choice")
    keep = max_length - len(prefix) - sum(len(c) - 1 for c in choices)
    if keep < 1:
        raise TaskError(
            f"the choices leave no room for the text in max_seq_length {max_length} (the task's, at most the model's)"
        )
    return keep


def encode_causal_choice(
    prefix: Sequence[int], text: Sequence[int], choices: Sequence[Sequence[int]], max_length: int
) -> ChoiceSample:
    """One example as one forward row (see the module docstring); the text keeps its last tokens when too long."""
    context = [*prefix, *list(text)[-causal_choice_room(prefix, choices, max_length) :]]
    if len(context) < 1:
        raise TaskError("a causal model needs at least one context token before the choices")
    division = len(context)
    ids, positions, spans = list(context), list(range(division)), []
    for choice in choices:
        start = len(ids)
        ids.extend(choice[:-1])
        positions.extend(range(division, division + len(choice) - 1))
        spans.append((start, len(ids)))
    total = len(ids)
    allowed = torch.zeros(total, total, dtype=torch.bool)
    allowed[:, :division] = True
    allowed[:division, :division] = torch.ones(division, division, dtype=torch.bool).tril()
    for start, end in spans:
        allowed[start:end, start:end] = torch.ones(end - start, end - start, dtype=torch.bool).tril()
    targets = [([division - 1, *range(start, end)], list(choice)) for (start, end), choice in zip(spans, choices)]
    return ChoiceSample(Sample(ids, positions, allowed), targets)


def iter_causal_windows(
    prefix: Sequence[int], tokens: Sequence[int], window: int, generation_length: int
) -> Iterator[Window]:
    """Sliding windows over ``tokens`` after ``prefix`` (see the module docstring); ``window`` counts text tokens. With
    no prefix, the very first token has nothing to be predicted from and is not scored."""
    if not 0 < generation_length < window:
        raise ValueError(f"generation_length must be in (0, {window}), got {generation_length}")
    tokens = list(tokens)
    spans = [(0, 0, min(window, len(tokens)))] if tokens else []  # (context start, scored start, end)
    spans += [
        (start - (window - generation_length), start, min(start + generation_length, len(tokens)))
        for start in range(window, len(tokens), generation_length)
    ]
    for begin, start, end in spans:
        context, text = [*prefix, *tokens[begin:start]], tokens[start:end]
        if not context:
            context, text = text[:1], text[1:]
            if not text:
                continue
        ids = [*context, *text[:-1]]
        allowed = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
        yield Window(Sample(ids, list(range(len(ids))), allowed), len(context) - 1, text)
