"""A request inside the serving core: its tokens, how far its keys and values are cached, and its blocks."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from glm_engine.generation.masks import SequenceLayout
from glm_engine.serving.sampling import SamplingParams, TokenChoice


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One request's generation. ``tokens`` is the prompt then the generated ids; the keys and values of the first
    ``computed`` tokens are in the pool (a preempted sequence drops them and computes them again)."""

    request_id: str
    prompt: list[int]
    params: SamplingParams
    layout: SequenceLayout
    generator: torch.Generator
    end_token_ids: frozenset[int]
    arrival: int
    banned: tuple[slice, ...] = ()
    tokens: list[int] = field(default_factory=list)
    choices: list[TokenChoice] = field(default_factory=list)
    computed: int = 0
    blocks: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    finish_reason: str | None = None
    preemptions: int = 0

    def __post_init__(self) -> None:
        if not self.tokens:
            self.tokens = list(self.prompt)

    @property
    def generated(self) -> list[int]:
        return self.tokens[len(self.prompt) :]

    @property
    def pending(self) -> int:
        """Tokens whose keys and values are not cached yet (1 while decoding)."""
        return len(self.tokens) - self.computed

    def next_piece(self, chunk: int) -> int:
        """How many tokens the sequence computes next: its pending tokens in chunks of ``chunk`` counted from its
        first token (so the boundaries are the same under any load); a prompt that is not causal in one piece."""
        if self.computed == 0 and not self.layout.causal_prompt:
            return self.pending
        boundary = (self.computed // chunk + 1) * chunk
        return min(boundary, len(self.tokens)) - self.computed
