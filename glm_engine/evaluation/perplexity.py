"""Language-model perplexity with the reference's encoding and normalisation (docs/evaluation.md#task-encodings).

The token stream is cut into windows of up to ``max_sequence_length - 1`` tokens; window k scores its last
``generation_length`` tokens (window 0 scores all of its tokens) given the rest as a bidirectional prompt:
input ``prompt + [gMASK, sop] + text[:-1]``, positions ``arange``, the prompt and ``[gMASK]`` bidirectional, the rest
causal. PPL is ``exp(min(20, total NLL / number of units))`` where the reference's unit is its word count of the raw
text, ``len(text.strip().split(" "))`` (pieces between single spaces: a newline does not separate words, a double
space adds an empty one); characters or tokens can be asked for where words make no sense (Chinese).

``unidirectional`` windows are causal throughout: ``[gMASK, sop] + window[:-1]`` with the same scored tokens. (The
reference's unidirectional windows score every token of each window, so tokens in the overlap of two windows count
several times; here every token counts once, as in the bidirectional form.)
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from glm_engine.backends.base import ModelRunner
from glm_engine.engine import forward_checked
from glm_engine.evaluation.batching import Forward, Sample, collate
from glm_engine.evaluation.datasets import word_count
from glm_engine.generation.masks import generation_blocked
from glm_engine.tokenizer import GLMTokenizer

# The reference caps the exponent so a broken model reports e^20 instead of overflowing.
MAX_LOG_PPL = 20.0
UNITS = ("words", "chars", "tokens")


@dataclass(frozen=True)
class PerplexityResult:
    nll: float  # total negative log-likelihood, nats
    num_tokens: int
    num_units: int
    unit: str

    @property
    def ppl(self) -> float:
        return capped_perplexity(self.nll, self.num_units)

    @property
    def token_ppl(self) -> float:
        return capped_perplexity(self.nll, self.num_tokens)


def capped_perplexity(nll: float, num_units: int) -> float:
    """``exp(min(20, nll / units))``, the reference's PPL."""
    return math.exp(min(MAX_LOG_PPL, nll / num_units))


def bits_per_byte(nll: float, num_bytes: int) -> float:
    """Nats over the UTF-8 bytes of the raw text, in bits (the reference's Pile BPB)."""
    return nll / num_bytes / math.log(2)


def count_units(text: str, unit: str) -> int:
    """``text``'s units: ``words`` is the reference's ``num_original_tokens`` (the word count ``glm-engine evaluate``
    divides by), ``chars`` the non-whitespace characters."""
    if unit == "words":
        return word_count(text)
    if unit == "chars":
        return sum(1 for ch in text if not ch.isspace())
    raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")


def num_windows(num_tokens: int, window: int, generation_length: int) -> int:
    """How many windows :func:`iter_lm_windows` cuts ``num_tokens`` tokens into (the reference's ``num_sequences``)."""
    if num_tokens == 0:
        return 0
    return 1 + -(-max(num_tokens - window, 0) // generation_length)


@dataclass(frozen=True)
class Window:
    """One scoring forward: its sample, and the rows whose predictions are scored against ``targets``."""

    sample: Sample
    first_scored: int
    targets: list[int]


def iter_lm_windows(
    tokens: Sequence[int],
    window: int,
    generation_length: int,
    mask_id: int,
    sop_id: int,
    unidirectional: bool = False,
) -> Iterator[Window]:
    """The reference's sliding windows over ``tokens``: window 0 scores its first ``window`` tokens, each later one
    the next ``generation_length`` tokens after ``window - generation_length`` tokens of context; one at a time."""
    if not 0 < generation_length < window:
        raise ValueError(f"generation_length must be in (0, {window}), got {generation_length}")
    tokens = list(tokens)
    spans = [(0, 0, min(window, len(tokens)))] if tokens else []  # (context start, scored start, end)
    spans += [
        (start - (window - generation_length), start, min(start + generation_length, len(tokens)))
        for start in range(window, len(tokens), generation_length)
    ]
    for begin, start, end in spans:
        prompt, text = tokens[begin:start], tokens[start:end]
        if unidirectional:
            ids = [mask_id, sop_id, *prompt, *text[:-1]]
            bidirectional = 1  # only the mask token itself: a causal mask
            first = 1 + len(prompt)
        else:
            ids = [*prompt, mask_id, sop_id, *text[:-1]]
            bidirectional = len(prompt) + 1
            first = len(prompt) + 1
        allowed = ~generation_blocked(bidirectional + 1, len(ids))
        yield Window(Sample(ids, list(range(len(ids))), allowed), first, text)


@torch.inference_mode()
def window_nlls(
    forward: Forward,
    windows: Iterable[Window],
    pad_id: int,
    micro_batch_size: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[float]:
    """Each window's summed NLL (nats, fp32 cross-entropy) of its scored tokens, ``micro_batch_size`` windows per
    forward; ``progress(n)`` after every micro-batch of ``n`` windows."""
    nlls = []
    windows = iter(windows)
    while batch := list(itertools.islice(windows, micro_batch_size)):
        logits = forward(*collate([w.sample for w in batch], pad_id))
        for row, w in enumerate(batch):
            scored = logits[row, w.first_scored : w.first_scored + len(w.targets)].float()
            targets = torch.tensor(w.targets, device=scored.device)
            nlls.append(float(torch.nn.functional.cross_entropy(scored, targets, reduction="sum")))
        if progress is not None:
            progress(len(batch))
    return nlls


def score_windows(
    forward: Forward,
    windows: Sequence[Window],
    pad_id: int,
    micro_batch_size: int = 1,
    progress: Callable[[int], None] | None = None,
) -> float:
    """Summed NLL (nats, fp32 cross-entropy) of every window's scored tokens."""
    return sum(window_nlls(forward, windows, pad_id, micro_batch_size, progress), 0.0)


@torch.inference_mode()
def perplexity(
    runner: ModelRunner,
    tokenizer: GLMTokenizer,
    text: str,
    generation_length: int | None = None,
    unit: str = "words",
) -> PerplexityResult:
    """Perplexity of ``runner`` on ``text``, scored as the reference's language-modelling task does.

    ``generation_length`` defaults to the reference's 256, or half the window for models with short contexts.
    """
    layout, window = tokenizer.layout, runner.config.max_sequence_length - 1
    generation_length = generation_length or min(256, window // 2)
    tokens = tokenizer.encode(text)
    windows = iter_lm_windows(tokens, window, generation_length, layout.gmask, layout.sop)
    nll = score_windows(functools.partial(forward_checked, runner), windows, layout.pad)
    units = len(tokens) if unit == "tokens" else count_units(text, unit)
    return PerplexityResult(nll, len(tokens), max(units, 1), unit)
