"""The reply loop of chat models, shared by every chat family: sampling options, invalid-score guard, decoding.

A family supplies its prompt format and the positions/mask of a reply batch (``model/<family>/chat.py``); this module
samples the reply as transformers' ``generate`` does in the reference's ``chat()``: temperature, then top-k, then
top-p, on the CPU so a seed gives the same tokens on every device, stopping at an end token or a length limit that
counts the prompt (``docs/glm-semantics.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from glm_engine.backends.base import ModelRunner
from glm_engine.errors import InputError
from glm_engine.generation.decode import Strategy, TokenCallback, decode_aligned
from glm_engine.generation.masks import AlignedBatch
from glm_engine.generation.option_types import check_option_types, check_seed
from glm_engine.generation.strategies import BaseStrategy, GreedyStrategy

# chat()/stream_chat() defaults of the ChatGLM line, and transformers' GenerationConfig default top_k that sampling
# also applies.
DEFAULT_MAX_LENGTH = 2048
DEFAULT_TOP_P = 0.7
DEFAULT_TEMPERATURE = 0.95
DEFAULT_TOP_K = 50
# InvalidScoreLogitsProcessor: NaN/inf scores become 0 with this score at this id.
INVALID_SCORE_TOKEN = 5
INVALID_SCORE_VALUE = 5e4

# (prompt ids, each row's budget of new tokens) -> the left-aligned batch with the family's positions and mask
BatchBuilder = Callable[[Sequence[Sequence[int]], Sequence[int]], AlignedBatch]


class InvalidScoreGuard:
    """Wraps a strategy: logits with NaN or inf are replaced as the reference's ``InvalidScoreLogitsProcessor``
    does, so a numerically broken step yields its id (5; GLM-4: 198) instead of sampling from garbage."""

    handles_invalid_scores = True  # the decode loop leaves non-finite logits to it (the reference's behaviour)

    def __init__(self, strategy: Strategy, token: int = INVALID_SCORE_TOKEN) -> None:
        self.strategy = strategy
        self.num_beams = strategy.num_beams
        self.token = token

    @property
    def is_done(self) -> bool:
        return self.strategy.is_done

    def start(self, contexts: Sequence[Sequence[int]]) -> None:
        self.strategy.start(contexts)

    def finish(self, row: int) -> None:
        self.strategy.finish(row)

    def step(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bad = ~torch.isfinite(logits).all(dim=-1, keepdim=True)
        if bad.any():
            replacement = torch.zeros_like(logits)
            replacement[..., self.token] = INVALID_SCORE_VALUE
            logits = torch.where(bad, replacement, logits)
        return self.strategy.step(logits)

    def finalize(self) -> list[list[list[int]]]:
        return self.strategy.finalize()


@dataclass(frozen=True)
class ChatOptions:
    """How to generate a reply; defaults are ``chat()``'s. ``max_length`` counts the prompt, as in the reference;
    ``max_new_tokens``, when set, takes precedence and counts only the reply (transformers' rule)."""

    max_length: int = DEFAULT_MAX_LENGTH
    max_new_tokens: int | None = None
    do_sample: bool = True
    top_p: float = DEFAULT_TOP_P
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    seed: int = 1234

    def __post_init__(self) -> None:
        check_option_types(self)
        checks = [
            (self.max_length > 0, "max_length must be > 0"),
            (self.max_new_tokens is None or self.max_new_tokens > 0, "max_new_tokens must be > 0"),
            (0 < self.temperature < math.inf, "temperature must be a finite number > 0"),
            (self.top_k >= 0, "top_k must be >= 0 (0 = off)"),
            (0.0 <= self.top_p <= 1.0, "top_p must be in [0, 1] (0 = off)"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        check_seed(self.seed)

    @classmethod
    def from_kwargs(cls, **options: object) -> ChatOptions:
        """Options by name; an unknown name is an InputError listing the known ones."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"unknown chat options {unknown}; known: {sorted(known)}")
        return cls(**options)  # type: ignore[arg-type]

    def length_limit(self, prompt_length: int) -> int:
        """Tokens allowed in total (prompt included) for a prompt of ``prompt_length`` tokens."""
        return self.max_length if self.max_new_tokens is None else prompt_length + self.max_new_tokens

    def build_strategy(
        self,
        end_token_ids: Sequence[int],
        generator: torch.Generator | None = None,
        invalid_score_token: int = INVALID_SCORE_TOKEN,
        banned: Sequence[slice] = (),
    ) -> Strategy:
        """Sampling (temperature, top-k, top-p; on the CPU, so a seed gives the same tokens on every device) or
        greedy, guarded against invalid scores (``invalid_score_token``: the id the release's guard forces), never
        choosing an id in ``banned``."""
        ends = tuple(end_token_ids)
        if not self.do_sample:
            return InvalidScoreGuard(GreedyStrategy(ends, banned), invalid_score_token)
        generator = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        sampler = BaseStrategy(self.temperature, self.top_k, self.top_p, ends, banned, generator=generator)
        return InvalidScoreGuard(sampler, invalid_score_token)


def generate_replies(
    runner: ModelRunner,
    build_batch: BatchBuilder,
    prompts: Sequence[Sequence[int]],
    max_length: int,
    strategy: Strategy,
    pad_id: int,
    on_token: TokenCallback | None = None,
) -> list[list[int]]:
    """Generated ids per prompt (ending with an end token when the model produced one), at most ``max_length``
    tokens with the prompt, as ``generate(max_length=...)`` counts them."""
    limit = min(max_length, runner.config.max_sequence_length)
    budgets = [limit - len(ids) for ids in prompts]
    if min(budgets) < 1:
        longest = max(len(ids) for ids in prompts)
        raise InputError(
            f"the prompt has {longest} tokens, which leaves no room below max_length {limit}; "
            "shorten it, clear the chat history or raise --max-length (at most the model's "
            f"{runner.config.max_sequence_length})"
        )
    batch = build_batch(prompts, budgets)
    beams = decode_aligned(runner, batch, [list(p) for p in prompts], budgets, strategy, pad_id, on_token)
    return [row[0] for row in beams]
