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


@dataclass(frozen=True)
class Segment:
    """A sequence's tokens ``start..end-1`` in this step: where they sit in the packed row and in the pool."""

    offset: int  # first column of the packed row
    new_slots: torch.Tensor  # [end - start] slots the new keys go to
    all_slots: torch.Tensor  # [end] slots of every key the sequence has
    blocked: torch.Tensor  # [1, 1, end - start, end] bool, True = blocked

    @property
    def length(self) -> int:
        return self.new_slots.shape[0]


class PagedStepCache:
    """The ``cache`` a serving step hands the graph (``KVCache``'s ``attend``/``advance`` interface)."""

    def __init__(self, pool: BlockPool, segments: list[Segment]) -> None:
        self.pool = pool
        self.segments = segments

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
        contexts = []
        for seg in self.segments:
            cut = slice(seg.offset, seg.offset + seg.length)
            self.pool.write(layer, seg.new_slots, k[0, :, cut].transpose(0, 1), v[0, :, cut].transpose(0, 1))
            keys, values = self.pool.read(layer, seg.all_slots)
            query = q[:, :, cut].contiguous()  # the same memory layout alone or packed: kernels may pick by strides
            contexts.append(ops.attention(query, keys, values, seg.blocked, layer_scale=layer_scale))
        return torch.cat(contexts, dim=2)

    def advance(self, num_tokens: int) -> None:
        """Nothing to do: each sequence's length is the scheduler's."""
