"""Tensor-parallel split rules against an independent transcription of the reference's tools/convert_tp.py."""

from __future__ import annotations

import pytest
import torch
from reference_tp import reference_convert

from glm_engine.errors import CheckpointError
from glm_engine.model.glm130b.weights import split_of
from glm_engine.parallel.sharding import GroupedQKV, ShardBuilder, merge, reshard, shard, shard_shape

KEYS = {
    "transformer.word_embeddings.weight": (24, 4),
    "transformer.layers.0.attention.query_key_value.weight": (48, 4),
    "transformer.layers.0.attention.query_key_value.bias": (48,),
    "transformer.layers.0.attention.dense.weight": (4, 24),
    "transformer.layers.0.attention.dense.bias": (4,),
    "transformer.layers.0.mlp.dense_h_to_4h.weight": (48, 4),
    "transformer.layers.0.mlp.dense_h_to_4h.bias": (48,),
    "transformer.layers.0.mlp.dense_4h_to_h.weight": (4, 24),
    "transformer.layers.0.input_layernorm.weight": (4,),
    "transformer.final_layernorm.bias": (4,),
}


@pytest.mark.parametrize("key", sorted(KEYS))
@pytest.mark.parametrize(("source_tp", "target_tp"), [(1, 4), (4, 1), (4, 2), (2, 4), (2, 2), (1, 1)])
def test_reshard_equals_reference_convert_tp(key: str, source_tp: int, target_tp: int) -> None:
    full = torch.randn(KEYS[key], dtype=torch.float16)
    sources = [shard(split_of(key), full, r, source_tp) for r in range(source_tp)]
    for rank in range(target_tp):
        ours = reshard(split_of(key), sources, rank, target_tp)
        assert torch.equal(ours, reference_convert(key, sources, rank, target_tp))
    assert torch.equal(
        merge(split_of(key), [reshard(split_of(key), sources, r, target_tp) for r in range(target_tp)]), full
    )


def test_glu_shard_holds_its_slice_of_each_half() -> None:
    key = "transformer.layers.0.mlp.dense_h_to_4h.bias"
    full = torch.arange(16.0)
    assert shard(split_of(key), full, 1, 4).tolist() == [2.0, 3.0, 10.0, 11.0]


def test_uneven_degrees_go_through_global_coordinates() -> None:
    key = "transformer.layers.0.mlp.dense_h_to_4h.weight"
    full = torch.randn(48, 4)
    three = [shard(split_of(key), full, r, 3) for r in range(3)]
    two = [reshard(split_of(key), three, r, 2) for r in range(2)]
    assert all(torch.equal(two[r], shard(split_of(key), full, r, 2)) for r in range(2))


def test_builder_takes_sources_one_at_a_time_and_knows_which_it_needs() -> None:
    key = "transformer.layers.0.attention.dense.weight"
    full = torch.randn(4, 24)
    sources = [shard(split_of(key), full, r, 4) for r in range(4)]
    builder = ShardBuilder(key, split_of(key), sources[0].shape, 4, rank=1, tp=2, dtype=full.dtype)
    assert [s for s in range(4) if builder.needs(s)] == [2, 3]
    for s in (2, 3):
        builder.add(s, sources[s])
    assert torch.equal(builder.finish(), full[:, 12:])


def test_incomplete_or_mismatched_sources_are_errors() -> None:
    key = "transformer.layers.0.attention.query_key_value.weight"
    builder = ShardBuilder(key, split_of(key), (12, 4), 4, rank=0, tp=1, dtype=torch.float32)
    builder.add(0, torch.zeros(12, 4))
    with pytest.raises(CheckpointError, match="incomplete"):
        builder.finish()
    with pytest.raises(CheckpointError, match="expected"):
        builder.add(1, torch.zeros(11, 4))
    with pytest.raises(CheckpointError, match="cannot be split 5 ways"):
        shard_shape(split_of(key), (48, 4), 5)


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_grouped_qkv_splits_heads_and_splits_or_replicates_groups(groups: int) -> None:
    """Each rank holds its query heads, then the key and value groups those heads read: a share of the groups when
    they divide by the degree, else the one group its heads share (replicated across ``tp // groups`` ranks)."""
    heads, d = 8, 4
    rule = GroupedQKV(heads, groups, d)
    full = torch.arange(rule.length * 3, dtype=torch.float32).view(rule.length, 3)
    for tp in (1, 2, 4, 8):
        shards = [shard(rule, full, rank, tp) for rank in range(tp)]
        assert torch.equal(merge(rule, shards), full)
        for rank, piece in enumerate(shards):
            q_heads = range(rank * heads // tp, (rank + 1) * heads // tp)
            per_rank = max(1, groups // tp)
            kv_groups = sorted({h * groups // heads for h in q_heads})
            assert len(kv_groups) == per_rank
            rows = [h * d + i for h in q_heads for i in range(d)]
            rows += [(heads + g) * d + i for g in kv_groups for i in range(d)]
            rows += [(heads + groups + g) * d + i for g in kv_groups for i in range(d)]
            assert torch.equal(piece, full[rows]), (tp, rank)
        for target_tp in (1, 2, 4, 8):  # any degree re-shards to any other, replicated groups taken once
            for rank in range(target_tp):
                assert torch.equal(reshard(rule, shards, rank, target_tp), shard(rule, full, rank, target_tp))


def test_grouped_qkv_refuses_degrees_that_neither_divide_nor_are_divided_by_the_groups() -> None:
    with pytest.raises(CheckpointError, match="key/value groups"):
        shard(GroupedQKV(12, 4, 2), torch.zeros(40, 1), 0, 6)
