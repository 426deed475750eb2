"""One serving step's sequences packed into one row of tokens, each attending only over its own cached blocks.

The graph runs ``[1, tokens]``: products over every token at once, attention per sequence (its new keys and values
written to its slots, then all of its keys read back in order), so a sequence's attention is the same computation
whatever else runs beside it. The model's ``blocked`` argument is not used: each segment carries its own mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glm_engine.ops.interface import OpTable
from glm_engine.serving.kv_blocks import BlockPool


@dataclass(frozen=True, eq=False)  # compared by identity: it holds tensors
class Segment:
    """A sequence's tokens ``start..end-1`` in this step: where they sit in the packed row and in the pool."""

    offset: int  # first column of the packed row
    new_slots: torch.Tensor  # [end - start] slots the new keys go to
    all_slots: torch.Tensor  # [end] slots of every key the sequence has
    blocked: torch.Tensor  # [1, 1, end - start, end] bool, True = blocked
    attends_all: bool = False  # no key is blocked (a decode row): fit for a backend's paged decode kernel

    @property
    def length(self) -> int:
        return self.new_slots.shape[0]


class PagedStepCache:
    """The ``cache`` a serving step hands the graph (``KVCache``'s ``attend``/``advance`` interface).

    Where the op table has ``paged_decode_attention`` (the torch.cuda backends' Triton kernel), the one-token rows that
    attend to every key go to it in one launch, reading the pool through their slot tables; every other row (and every
    row elsewhere) gathers its sequence's keys and runs the op table's attention."""

    def __init__(self, pool: BlockPool, segments: list[Segment]) -> None:
        self.pool = pool
        self.segments = segments
        self._paged: tuple[list[Segment], torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def attend(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        blocked: torch.Tensor,
        ops: OpTable,
        layer_scale: float,
    ) -> torch.Tensor:
        """``q [1, heads, tokens, d]``, ``k, v [1, kv_heads, tokens, d]`` -> context ``[1, heads, tokens, d]``."""
        for seg in self.segments:
            cut = slice(seg.offset, seg.offset + seg.length)
            self.pool.write(layer, seg.new_slots, k[0, :, cut].transpose(0, 1), v[0, :, cut].transpose(0, 1))
        out = torch.empty_like(q)
        done = self._paged_rows(layer, q, ops, out)
        for seg in self.segments:
            if seg in done:
                continue
            cut = slice(seg.offset, seg.offset + seg.length)
            keys, values = self.pool.read(layer, seg.all_slots)
            query = q[:, :, cut].contiguous()  # the same memory layout alone or packed: kernels may pick by strides
            out[:, :, cut] = ops.attention(query, keys, values, seg.blocked, layer_scale=layer_scale)
        return out

    def _paged_rows(self, layer: int, q: torch.Tensor, ops: OpTable, out: torch.Tensor) -> list[Segment]:
        """Run the decode rows through ``ops.paged_decode_attention`` when it has one; the segments it did."""
        kernel = getattr(ops, "paged_decode_attention", None)
        if kernel is None:
            return []
        if self._paged is None:
            rows = [seg for seg in self.segments if seg.length == 1 and seg.attends_all]
            longest = max((seg.all_slots.shape[0] for seg in rows), default=0)
            slots = torch.zeros(len(rows), longest, dtype=torch.long, device=q.device)
            for i, seg in enumerate(rows):
                slots[i, : seg.all_slots.shape[0]] = seg.all_slots
            lengths = torch.tensor([seg.all_slots.shape[0] for seg in rows], dtype=torch.long, device=q.device)
            columns = torch.tensor([seg.offset for seg in rows], dtype=torch.long, device=q.device)
            self._paged = (rows, slots, lengths, columns)
        rows, slots, lengths, columns = self._paged
        if not rows:
            return []
        storage = self.pool.storage[layer]
        result = kernel(q[0][:, columns].transpose(0, 1), storage[0], storage[1], slots, lengths)
        if result is None:
            return []
        out[0][:, columns] = result.transpose(0, 1)
        return rows

    def advance(self, num_tokens: int) -> None:
        """Nothing to do: each sequence's length is the scheduler's."""
