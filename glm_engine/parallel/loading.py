"""One rank's weights from a full (TP=1) state dict already in memory (random preset weights, tests).

Checkpoints on disk go through ``Checkpoint.rank_state_dict``, which streams source shards at any TP degree;
:func:`rank_state_dict` slices full tensors lazily with :func:`~glm_engine.parallel.sharding.shard`, one tensor at a
time, so memory holds one full tensor and this rank's shards beyond the source.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from glm_engine.config import GLMConfig
from glm_engine.model.weights import check_state_dict, parameter_shapes
from glm_engine.parallel.sharding import shard, shard_shape


class _RankShards(Mapping[str, torch.Tensor]):
    """A read-only view of a full state dict that hands out rank ``rank`` of ``tp``'s shard of each tensor.

    Like the lazy native checkpoint, it answers ``shape(key)``/``dtype(key)`` without reading, so validation costs
    nothing; keys the model does not use pass through unsliced.
    """

    def __init__(self, full: Mapping[str, torch.Tensor], expected: Mapping[str, object], rank: int, tp: int) -> None:
        self._full, self._expected, self._rank, self._tp = full, expected, rank, tp

    def __getitem__(self, key: str) -> torch.Tensor:
        tensor = self._full[key]
        return shard(key, tensor, self._rank, self._tp) if key in self._expected else tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._full)

    def __len__(self) -> int:
        return len(self._full)

    def shape(self, key: str) -> tuple[int, ...]:
        shape_of = getattr(self._full, "shape", None)
        full_shape = tuple(shape_of(key)) if callable(shape_of) else tuple(self._full[key].shape)
        return shard_shape(key, full_shape, self._tp) if key in self._expected else full_shape

    def dtype(self, key: str) -> torch.dtype:
        dtype_of = getattr(self._full, "dtype", None)
        return dtype_of(key) if callable(dtype_of) else self._full[key].dtype


def rank_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: GLMConfig, rank: int, tp: int, source: str = "state dict"
) -> Mapping[str, torch.Tensor]:
    """Rank ``rank`` of ``tp``'s state dict (the reference's split, glm130b.md section 2.3) from a full one.

    The full state dict is validated first, so a wrong key or shape is reported in the checkpoint's own terms.
    At ``tp == 1`` the state dict is returned as it is.
    """
    if tp == 1:
        return state_dict
    check_state_dict(state_dict, config, source)
    return _RankShards(state_dict, parameter_shapes(config), rank, tp)
