"""How a weight is split across tensor-parallel ranks, and re-sharding between any two TP degrees.

The kinds of split (``docs/tensor-parallelism.md``): column-parallel weights split dim 0 and their biases with them;
row-parallel weights split dim 1 and keep their bias whole; norms are replicated; a GLU's ``[linear; gate]`` weight is
split per half, so each rank holds its slice of the linear half followed by its slice of the gate half; a grouped-query
``[q heads | k groups | v groups]`` weight (:class:`GroupedQKV`) splits each of its three parts, its key/value groups
replicated when there are more ranks than groups. Which weight takes which split is a family's rule
(``Family.weight_layout(config).split``), never decided here.

Re-sharding is written in global coordinates: a rank's shard is a list of *segments* (a global range of the split
axis and where it sits in the local tensor), and a target shard is filled from the overlaps with the source
segments. So any TP degree converts to any other that divides the axes, one source shard at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import torch

from glm_engine.errors import CheckpointError


class Split(Enum):
    REPLICATED = "replicated"
    COLUMN = "column"  # dim 0, contiguous
    GLU_COLUMN = "glu-column"  # dim 0, each half split separately
    ROW = "row"  # dim 1


@dataclass(frozen=True)
class GroupedQKV:
    """The split of a grouped-query ``[q heads | k groups | v groups]`` weight (rows) or bias: each rank takes its
    query heads and its key/value groups; with more ranks than groups, ``tp // groups`` neighbouring ranks share
    (replicate) one group, as the query heads they hold attend to it."""

    heads: int
    groups: int
    head_dim: int

    @property
    def length(self) -> int:
        return (self.heads + 2 * self.groups) * self.head_dim

    def check(self, tp: int) -> None:
        if self.heads % tp or (self.groups % tp and tp % self.groups):
            raise CheckpointError(
                f"{self.heads} query heads and {self.groups} key/value groups cannot be split {tp} ways: the heads "
                "must divide by it, and the groups divide by it or it by the groups"
            )

    def segments(self, rank: int, tp: int, first_owner_only: bool = False) -> list[Segment]:
        """Rank ``rank``'s query rows, then its key rows, then its value rows. ``first_owner_only`` drops replicated
        key/value rows from every rank but the first that holds them (reading each global row once)."""
        self.check(tp)
        d, q_rows = self.head_dim, self.heads // tp * self.head_dim
        out = [Segment(rank * q_rows, (rank + 1) * q_rows, 0)]
        if self.groups >= tp:
            group_rows, first = self.groups // tp * d, rank * (self.groups // tp) * d
        else:
            sharing = tp // self.groups
            if first_owner_only and rank % sharing:
                return out
            group_rows, first = d, rank // sharing * d
        for part in range(2):  # keys, then values
            start = (self.heads + part * self.groups) * d + first
            out.append(Segment(start, start + group_rows, q_rows + part * group_rows))
        return out

    def shard_length(self, tp: int) -> int:
        return sum(s.stop - s.start for s in self.segments(0, tp))


SplitRule = Split | GroupedQKV  # what a layout's ``split(key)`` answers


def split_dim(split: SplitRule) -> int:
    return 1 if split is Split.ROW else 0


@dataclass(frozen=True)
class Segment:
    """Global rows/columns ``[start, stop)`` of the split axis, stored from ``local_start`` in the shard."""

    start: int
    stop: int
    local_start: int


def segments(split: SplitRule, global_length: int, rank: int, tp: int) -> list[Segment]:
    """The pieces of the split axis that ``rank`` of ``tp`` holds (one, two for the GLU halves, three for grouped
    query/key/value)."""
    if isinstance(split, GroupedQKV):
        if global_length != split.length:
            raise CheckpointError(f"a grouped query/key/value axis of {global_length} rows, expected {split.length}")
        return split.segments(rank, tp)
    if split is Split.REPLICATED:
        return [Segment(0, global_length, 0)]
    parts = 2 if split is Split.GLU_COLUMN else 1
    if global_length % (parts * tp):
        raise CheckpointError(f"an axis of {global_length} cannot be split {tp} ways ({split.value} split)")
    part, piece = global_length // parts, global_length // (parts * tp)
    return [Segment(p * part + rank * piece, p * part + (rank + 1) * piece, p * piece) for p in range(parts)]


def shard_shape(split: SplitRule, global_shape: Sequence[int], tp: int) -> tuple[int, ...]:
    """The per-rank shape of a ``split`` weight at TP degree ``tp``."""
    shape = list(global_shape)
    if isinstance(split, GroupedQKV):
        segments(split, shape[0], 0, tp)  # validates the length and the degree
        shape[0] = split.shard_length(tp)
    elif split is not Split.REPLICATED:
        dim = split_dim(split)
        segments(split, shape[dim], 0, tp)  # validates divisibility
        shape[dim] //= tp
    return tuple(shape)


def shard(split: SplitRule, full: torch.Tensor, rank: int, tp: int, key: str = "a weight") -> torch.Tensor:
    """Rank ``rank``'s shard of the full (TP=1) tensor, as a new contiguous tensor."""
    return reshard(split, [full], rank, tp, key)


def merge(split: SplitRule, shards: Sequence[torch.Tensor], key: str = "a weight") -> torch.Tensor:
    """The full (TP=1) tensor from all shards in rank order (the reference's merge, including the GLU halves)."""
    return reshard(split, shards, 0, 1, key)


def reshard(
    split: SplitRule, sources: Sequence[torch.Tensor], rank: int, tp: int, key: str = "a weight"
) -> torch.Tensor:
    """Rank ``rank`` of ``tp`` built from all source shards (source TP = ``len(sources)``)."""
    first = sources[0]
    target = ShardBuilder(key, split, first.shape, len(sources), rank, tp, first.dtype, first.device)
    for source_rank, source in enumerate(sources):
        target.add(source_rank, source)
    return target.finish()


class ShardBuilder:
    """Fills one target shard from source shards that arrive one at a time (so only one needs to be in memory)."""

    def __init__(
        self,
        key: str,
        split: SplitRule,
        source_shape: Sequence[int],
        source_tp: int,
        rank: int,
        tp: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        self.key, self.split = key, split
        self.source_tp, self.rank, self.tp = source_tp, rank, tp
        self.dim = split_dim(self.split)
        global_shape = list(source_shape)
        if isinstance(self.split, GroupedQKV):
            global_shape[0] = self.split.length
        elif self.split is not Split.REPLICATED:
            global_shape[self.dim] *= source_tp
        self.global_length = global_shape[self.dim] if len(global_shape) > self.dim else 1
        self.source_shape = tuple(source_shape)
        self.wanted = segments(self.split, self.global_length, rank, tp)
        self.shape, self.dtype, self.device = shard_shape(split, global_shape, tp), dtype, device
        self._out: torch.Tensor | None = None  # allocated at the first source that contributes
        self.filled = 0

    @property
    def out(self) -> torch.Tensor:
        if self._out is None:
            self._out = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        return self._out

    def needs(self, source_rank: int) -> bool:
        """Whether the source shard ``source_rank`` holds any part of this target shard."""
        if self.split is Split.REPLICATED:
            return source_rank == 0
        return any(_overlap(w, s) for w in self.wanted for s in self._source_segments(source_rank))

    def add(self, source_rank: int, source: torch.Tensor) -> None:
        """Copy the parts of ``source`` (shard ``source_rank`` of the source TP) that this target shard holds."""
        if tuple(source.shape) != self.source_shape:
            raise CheckpointError(
                f"{self.key}: source shard {source_rank} is {tuple(source.shape)}, expected {self.source_shape} "
                "like shard 0"
            )
        if self.split is Split.REPLICATED:
            if source_rank == 0:  # the reference copies replicated tensors from the first source
                self.out.copy_(source)
                self.filled = self.global_length
            return
        for want in self.wanted:
            for have in self._source_segments(source_rank):
                start, stop = max(want.start, have.start), min(want.stop, have.stop)
                if start >= stop:
                    continue
                piece = source.narrow(self.dim, have.local_start + start - have.start, stop - start)
                self.out.narrow(self.dim, want.local_start + start - want.start, stop - start).copy_(piece)
                self.filled += stop - start

    def finish(self) -> torch.Tensor:
        expected = self.global_length if self.split is Split.REPLICATED else self.shape[self.dim]
        if self.filled != expected:
            raise CheckpointError(f"{self.key}: target shard {self.rank} of {self.tp} is incomplete (internal error)")
        return self.out

    def _source_segments(self, source_rank: int) -> list[Segment]:
        if isinstance(self.split, GroupedQKV):  # a replicated group is taken from the first source rank holding it
            return self.split.segments(source_rank, self.source_tp, first_owner_only=True)
        return segments(self.split, self.global_length, source_rank, self.source_tp)


def _overlap(a: Segment, b: Segment) -> bool:
    return max(a.start, b.start) < min(a.stop, b.stop)
