"""Per-request sampling: each request has its own parameters and random stream, so its tokens do not depend on what
else runs (OpenAI's conventions: ``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1 filter nothing)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from glm_engine.errors import InputError
from glm_engine.generation.strategies import FILTER_VALUE, sampling_candidates

SEED_RANGE = (-(2**63), 2**63)  # what torch.Generator.manual_seed takes, with room for a choice's offset


@dataclass(frozen=True)
class SamplingParams:
    """How one request generates and when it stops."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings: the text ends before the first of them
    stop_token_ids: tuple[int, ...] = ()  # besides the family's end tokens
    ignore_eos: bool = False
    logprobs: int | None = None  # how many top alternatives to report per token (None: none, 0: the chosen one's)

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, got {self.top_k}")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed < SEED_RANGE[1]:
            problems.append(f"seed must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}), got {self.seed}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            problems.append(f"logprobs must be between 0 and 20, got {self.logprobs}")
        if problems:
            raise InputError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class TokenChoice:
    """The chosen token, its log-probability and the top alternatives (when asked for)."""

    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


def new_generator(seed: int | None) -> torch.Generator:
    """A request's own random stream (seeded from the OS when no seed is given)."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def choose_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator, banned: Sequence[slice] = ()
) -> TokenChoice:
    """One token from a row of logits ``[vocab]`` (fp32): greedy at temperature 0, else top-k/top-p sampling."""
    logits = logits.float().clone()
    for ids in banned:
        logits[ids] = FILTER_VALUE
    if params.greedy:
        token = int(torch.argmax(logits))
    else:
        scaled = (logits - logits.max()) / params.temperature  # the top logit at 0: no inf - inf at tiny temperatures
        top_p = 0.0 if params.top_p >= 1.0 else params.top_p
        candidates = sampling_candidates(scaled, params.top_k, top_p)
        probs = F.softmax(scaled[candidates], dim=-1)
        token = int(candidates[torch.multinomial(probs, 1, generator=generator)])
    if params.logprobs is None:
        return TokenChoice(token)
    logprobs = torch.log_softmax(logits, dim=-1)
    top = []
    if params.logprobs > 0:
        values, ids = torch.topk(logprobs, params.logprobs)
        top = [(int(i), float(x)) for i, x in zip(ids, values, strict=True)]
    return TokenChoice(token, float(logprobs[token]), top)
