"""Re-sharding quantized weights between TP degrees without dequantizing.

The int8 values follow the float rules (``parallel.sharding``). Scales follow the rows for column-parallel weights.
For a row-parallel weight each source rank quantized its own input slice (the reference's convert_tp), so in global
coordinates the weight is groupwise with one group per source slice (or more, if it was groupwise already). A target
slice then takes groups of ``gcd(source group, target width)`` columns, each inside one source group, so its values
and scales are exactly the source's: no re-quantization, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from glm_engine.errors import CheckpointError
from glm_engine.parallel.sharding import ShardBuilder, Split, SplitRule
from glm_engine.quant.reference import unpack_int4
from glm_engine.quant.weight import QuantizedWeight


def target_row_group(source_columns: int, source_group: int, source_tp: int, tp: int) -> int:
    """Columns per scale of a row-parallel weight re-sharded from ``source_tp`` to ``tp`` ranks, whose source shards
    have ``source_columns`` inputs in groups of ``source_group``: every target group lies inside one source group."""
    return math.gcd(source_group, source_columns * source_tp // tp)


class QuantShardBuilder:
    """Builds one target rank's QuantizedWeight from source shards' ``(stored, scale)`` arriving one at a time."""

    def __init__(
        self,
        key: str,
        split: SplitRule,
        source_shape: Sequence[int],
        source_groups: int,
        bits: int,
        source_tp: int,
        rank: int,
        tp: int,
        device: torch.device | str = "cpu",
    ) -> None:
        """``source_shape``: one source shard's float shape ``[out, in]``; ``source_groups``: its scale columns."""
        self.key, self.bits, self.split = key, bits, split
        self.source_tp, self.rank, self.tp = source_tp, rank, tp
        out, columns = source_shape
        self.values = ShardBuilder(key, split, source_shape, source_tp, rank, tp, torch.int8, device)
        if self.split is Split.ROW:
            source_group = columns // source_groups
            width = columns * source_tp // tp
            self.target_group = target_row_group(columns, source_group, source_tp, tp)
            self.source_columns, self.source_group, self.start = columns, source_group, rank * width
            self.scale = torch.empty(out, width // self.target_group, dtype=torch.float16, device=device)
            self.scale_filled = 0
        else:  # rows move, every row keeps its scales
            self.scales = ShardBuilder(key, split, (out, source_groups), source_tp, rank, tp, torch.float16, device)

    def needs(self, source_rank: int) -> bool:
        return self.values.needs(source_rank)

    def add(self, source_rank: int, stored: torch.Tensor, scale: torch.Tensor) -> None:
        values = unpack_int4(stored) if self.bits == 4 else stored
        scale = scale[:, None] if scale.dim() == 1 else scale
        self.values.add(source_rank, values)
        if self.split is not Split.ROW:
            self.scales.add(source_rank, scale)
            return
        source_start = source_rank * self.source_columns
        for j in range(self.scale.shape[1]):
            column = self.start + j * self.target_group
            if source_start <= column < source_start + self.source_columns:
                self.scale[:, j] = scale[:, (column - source_start) // self.source_group]
                self.scale_filled += 1

    def finish(self) -> QuantizedWeight:
        values = self.values.finish()
        if self.split is Split.ROW:
            if self.scale_filled != self.scale.shape[1]:
                raise CheckpointError(
                    f"{self.key}: target shard {self.rank} of {self.tp} lacks scales (internal error)"
                )
            scale = self.scale
        else:
            scale = self.scales.finish()
        return QuantizedWeight.from_values(values, scale, self.bits)


def shard_quantized(key: str, split: SplitRule, weight: QuantizedWeight, rank: int, tp: int) -> QuantizedWeight:
    """Rank ``rank`` of ``tp``'s shard of a whole (TP=1) quantized weight: its values and scales, exactly."""
    if tp == 1:
        return weight
    builder = QuantShardBuilder(
        key,
        split,
        weight.stored.shape[:1] + (weight.in_features,),
        weight.groups,
        weight.bits,
        1,
        rank,
        tp,
        weight.stored.device,
    )
    builder.add(0, weight.stored, weight.scale)
    return builder.finish()
