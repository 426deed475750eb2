"""Scoring samples with explicit attention masks, padded into micro-batches that give the same logits as one by one,
and the encoding constants the task types share.

Every sample carries its own ids, positions and ``allowed`` matrix (True = may attend). A batch pads on the right to
its longest sample: pad columns are blocked for every real row, so a real row computes what it computes alone. The
reference pads to a multiple of :data:`REFERENCE_TILE`; for the ``mul`` and ``lm`` scores that cannot change a result,
so we pad to the longest. It does change beam search (the padded length enters the length penalty), which
:mod:`glm_engine.evaluation.generation` reproduces. A pad row attends only to itself, so no softmax row is empty (an
all-blocked row is NaN in some attention kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")
# The reference's evaluation collates pad every micro-batch to its longest sample rounded up to a multiple of this.
REFERENCE_TILE = 32
# The mask token and one sop: what the reference reserves beside the text when truncating (mul and gen).
RESERVED_TOKENS = 2
# logits [b, s, vocab] for ids and positions [b, s] and a bool mask [b, 1, s, s] (True = blocked): Engine.forward
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Sample:
    """One forward row: ids and positions ``[s]``, ``allowed [s, s]`` bool (True = may attend)."""

    ids: list[int]
    positions: list[int]
    allowed: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.positions) != n or tuple(self.allowed.shape) != (n, n):
            raise ValueError(f"sample of {n} ids has {len(self.positions)} positions, mask {tuple(self.allowed.shape)}")


def collate(samples: Sequence[Sample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids, position_ids [b, s]`` and ``blocked [b, 1, s, s]`` (True = blocked) for ``samples``."""
    length = max(len(s.ids) for s in samples)
    batch = len(samples)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    position_ids = torch.zeros(batch, length, dtype=torch.long)
    blocked = torch.ones(batch, 1, length, length, dtype=torch.bool)
    pad_rows = torch.arange(length)
    for i, sample in enumerate(samples):
        n = len(sample.ids)
        input_ids[i, :n] = torch.tensor(sample.ids, dtype=torch.long)
        position_ids[i, :n] = torch.tensor(sample.positions, dtype=torch.long)
        blocked[i, 0, :n, :n] = ~sample.allowed
        blocked[i, 0, pad_rows[n:], pad_rows[n:]] = False
    return input_ids, position_ids, blocked


def micro_batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
