"""What runs in the next step: decodes first, then prefill chunks, within a token budget and the free KV blocks.

Running sequences keep their place: when the pool cannot hold the next token of one, the most recently admitted
running sequence is preempted (its blocks freed, its tokens computed again later). Waiting requests are admitted in
arrival order only while blocks are free for their first piece; new work never preempts running work.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from glm_engine.errors import InputError
from glm_engine.serving.kv_blocks import BlockPool
from glm_engine.serving.sequence import Sequence, Status


@dataclass(frozen=True)
class SchedulerLimits:
    """``max_tokens``: tokens computed per step (decodes and prefill chunks together); ``chunk``: a prefill chunk;
    ``max_running``: sequences in the running batch."""

    max_tokens: int = 256
    chunk: int = 64
    max_running: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.chunk <= self.max_tokens or self.max_running < 1:
            raise InputError(
                f"the prefill chunk ({self.chunk}) must be between 1 and the tokens per step ({self.max_tokens}), and "
                f"the running sequences ({self.max_running}) at least 1"
            )


@dataclass(frozen=True)
class Piece:
    """A sequence's tokens ``start..end-1`` computed in this step."""

    sequence: Sequence
    start: int
    end: int


class Scheduler:
    """The waiting queue, the running batch and the step plan over one :class:`BlockPool`."""

    def __init__(self, pool: BlockPool, limits: SchedulerLimits) -> None:
        self.pool = pool
        self.limits = limits
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, sequence: Sequence) -> None:
        self.waiting.append(sequence)

    def remove(self, sequence: Sequence) -> None:
        """Take ``sequence`` out (finished or cancelled) and free its blocks at once."""
        if sequence in self.running:
            self.running.remove(sequence)
        elif sequence in self.waiting:
            self.waiting.remove(sequence)
        self.pool.release(sequence.blocks)
        sequence.blocks = []

    def schedule(self) -> list[Piece]:
        """The pieces of the next step (empty when there is nothing to run)."""
        pieces: list[Piece] = []
        budget = self.limits.max_tokens
        for sequence in sorted(self.running, key=lambda s: s.arrival):
            if sequence.status is not Status.RUNNING:
                continue  # preempted while this step was planned
            size = sequence.next_piece(self.limits.chunk)
            if pieces and size > budget:
                continue  # a whole chunk or nothing, so chunk boundaries never depend on the load
            if not self._reserve(sequence, sequence.computed + size):
                continue
            pieces.append(Piece(sequence, sequence.computed, sequence.computed + size))
            budget -= size
        while self.waiting and len(self.running) < self.limits.max_running:
            sequence = self.waiting[0]
            size = sequence.next_piece(self.limits.chunk)
            needed = self.pool.blocks_for(sequence.computed + size) - len(sequence.blocks)
            if (pieces and size > budget) or needed > self.pool.free_blocks:
                break
            self.waiting.popleft()
            sequence.blocks += self.pool.allocate(needed)
            sequence.status = Status.RUNNING
            self.running.append(sequence)
            pieces.append(Piece(sequence, sequence.computed, sequence.computed + size))
            budget -= size
        return pieces

    def _reserve(self, sequence: Sequence, end: int) -> bool:
        """Blocks for ``sequence`` up to token ``end``, preempting the newest other running sequences as needed;
        False when ``sequence`` itself had to give way."""
        needed = self.pool.blocks_for(end) - len(sequence.blocks)
        while needed > self.pool.free_blocks:
            victim = max(self.running, key=lambda s: s.arrival)
            self._preempt(victim)
            if victim is sequence:
                return False
        sequence.blocks += self.pool.allocate(max(needed, 0))
        return True

    def _preempt(self, sequence: Sequence) -> None:
        """Free ``sequence``'s blocks and queue it first among the waiting, to be computed again from its start."""
        self.running.remove(sequence)
        self.pool.release(sequence.blocks)
        sequence.blocks = []
        sequence.computed = 0
        sequence.status = Status.WAITING
        sequence.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(sequence)
