"""The vocab-parallel embedding: each rank holds a contiguous slice of the word-embedding rows.

Rank ``r`` of ``tp`` owns ids ``[r*V/tp, (r+1)*V/tp)`` (the reference's ``VocabUtility``,
docs/glm-semantics.md#tensor-parallel-mechanics). It looks up the ids in its range, writes zeros for the others and the
all-reduce sums the one non-zero row per token, so the result equals the full lookup exactly. The same shard,
transposed, gives the rank's slice of the logits.
"""

from __future__ import annotations

import torch

from glm_engine.ops.interface import OpTable
from glm_engine.parallel.communicator import Communicator


def vocab_range(vocab_size: int, rank: int, tp: int) -> tuple[int, int]:
    """The ids ``[start, stop)`` whose embedding rows rank ``rank`` of ``tp`` holds."""
    rows = vocab_size // tp
    return rank * rows, (rank + 1) * rows


def vocab_parallel_embedding(
    ops: OpTable, input_ids: torch.Tensor, local_weight: torch.Tensor, comm: Communicator
) -> torch.Tensor:
    """Embedding rows for ``input_ids [b, s]`` when each rank holds ``local_weight [V/tp, h]``: ``[b, s, h]``."""
    if comm.world_size == 1:  # the whole table is here; keep the plain lookup (and its range check)
        return ops.embedding(input_ids, local_weight)
    start, stop = vocab_range(local_weight.shape[0] * comm.world_size, comm.rank, comm.world_size)
    elsewhere = (input_ids < start) | (input_ids >= stop)
    local_ids = input_ids - start
    rows = ops.embedding(local_ids.masked_fill(elsewhere, 0), local_weight)
    return comm.all_reduce(rows.masked_fill(elsewhere.unsqueeze(-1), 0))
