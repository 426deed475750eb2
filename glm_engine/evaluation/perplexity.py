"""Language-model perplexity with the reference's encoding and normalisation (glm130b.md section 5.4).

The token stream is cut into windows of up to ``max_sequence_length - 1`` tokens; window k scores its last
``generation_length`` tokens (window 0 scores all of its tokens) given the rest as a bidirectional prompt:
input ``prompt + [gMASK, sop] + text[:-1]``, positions ``arange``, the prompt and ``[gMASK]`` bidirectional, the rest
causal. PPL is ``exp(min(20, total NLL / number of units))`` where the reference's unit is the whitespace word of
the raw text (word-level PPL); characters or tokens can be asked for where words make no sense (Chinese).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from glm_engine.backends.base import ModelRunner
from glm_engine.generation.masks import generation_blocked
from glm_engine.tokenizer import GLMTokenizer
from glm_engine.vocab import VocabLayout

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
        return math.exp(min(MAX_LOG_PPL, self.nll / self.num_units))

    @property
    def token_ppl(self) -> float:
        return math.exp(min(MAX_LOG_PPL, self.nll / self.num_tokens))


def count_units(text: str, unit: str) -> int:
    if unit == "words":
        return len(text.split())
    if unit == "chars":
        return sum(1 for ch in text if not ch.isspace())
    raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")


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
    if not 0 < generation_length < window:
        raise ValueError(f"generation_length must be in (0, {window}), got {generation_length}")
    tokens = tokenizer.encode(text)
    nll = _score(runner, layout, [], tokens[:window]) if tokens else 0.0  # window 0 scores all it holds
    for start in range(window, len(tokens), generation_length):  # then G new tokens after W - G of context
        prompt = tokens[start - (window - generation_length) : start]
        nll += _score(runner, layout, prompt, tokens[start : start + generation_length])
    units = len(tokens) if unit == "tokens" else count_units(text, unit)
    return PerplexityResult(nll, len(tokens), max(units, 1), unit)


def _score(runner: ModelRunner, layout: VocabLayout, prompt: list[int], text: list[int]) -> float:
    """Summed NLL of ``text`` after ``prompt + [gMASK, sop]``."""
    ids = [*prompt, layout.gmask, layout.sop, *text[:-1]]
    total = len(ids)
    device = runner.device
    input_ids = torch.tensor([ids], device=device)
    positions = torch.arange(total, device=device).unsqueeze(0)
    blocked = generation_blocked(len(prompt) + 2, total)[None, None].to(device)
    logits = runner.forward(input_ids, positions, blocked).float()[0, len(prompt) + 1 :]
    targets = torch.tensor(text, device=device)
    return float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
