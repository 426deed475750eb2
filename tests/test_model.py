"""The GLM graph: KV-cache decoding equals recomputation, batching equals single rows, beams reorder correctly."""

import numpy as np
import pytest
import torch
from bounds import max_nmse, nmse

from glm_engine.backends.cpu.ops import CpuOps
from glm_engine.generation.decode import decode
from glm_engine.generation.masks import GenerationRow, align_left, generation_blocked, generation_positions
from glm_engine.generation.strategies import BaseStrategy, BeamSearchStrategy
from glm_engine.model.glm130b.config import preset
from glm_engine.model.glm130b.rotary import rotary_table
from glm_engine.model.kv_cache import KVCache
from glm_engine.ops.torch_ops import reference_attention
from tests.conftest import SMALL_LAYOUT, build_model

END_TOKENS = (SMALL_LAYOUT.eop, SMALL_LAYOUT.eos)


def glm_inputs(context, gen_len, mask_position, gmask):
    total = len(context) + gen_len
    positions = generation_positions(len(context), total, mask_position, gmask).unsqueeze(0)
    blocked = generation_blocked(len(context), total)[None, None]
    return positions, blocked


@pytest.mark.parametrize("gmask", [False, True])
def test_cached_decoding_equals_full_recomputation(small_model, gmask):
    tokens = torch.randint(20, 400, (2, 14), generator=torch.Generator().manual_seed(3))
    ctx = 9
    positions, blocked = glm_inputs(list(range(ctx)), 5, mask_position=4, gmask=gmask)
    positions = positions.expand(2, -1)
    full = small_model.forward(tokens, positions, blocked)
    cache = small_model.new_cache(2, 14)
    pieces = [small_model.forward(tokens[:, :ctx], positions[:, :ctx], blocked[..., :ctx, :ctx], cache)]
    for col in range(ctx, 14):
        pieces.append(
            small_model.forward(
                tokens[:, col : col + 1], positions[:, col : col + 1], blocked[..., col : col + 1, : col + 1], cache
            )
        )
    incremental = torch.cat(pieces, dim=1)
    torch.testing.assert_close(incremental, full, atol=2e-4, rtol=1e-4)


def test_a_batch_computes_each_row_as_if_alone(small_model):
    rows = [GenerationRow([30, 31, 500, 33, 12, 504], 2, False), GenerationRow([40, 41, 501, 504], 2, True)]
    batch = align_left(rows, total_length=6, pad_id=0)
    together = small_model.forward(batch.input_ids, batch.position_ids, batch.blocked)
    for i, row in enumerate(rows):
        n = len(row.context)
        positions, blocked = glm_inputs(row.context, 0, row.mask_position, row.gmask)
        alone = small_model.forward(torch.tensor([row.context]), positions, blocked)
        torch.testing.assert_close(together[i, -n:], alone[0], atol=1e-4, rtol=1e-4)


def test_batched_greedy_generation_matches_single_row_generation(small_model):
    rows = [
        GenerationRow([30, 31, 500, 33, 12, 504], 2, False),
        GenerationRow([40, 41, 42, 43, 501, 504], 4, True),
        GenerationRow([50, 501, 504], 1, True),
    ]
    budgets = [8, 6, 10]

    def greedy():
        return BaseStrategy(top_k=1, end_tokens=END_TOKENS)

    together = decode(small_model, rows, budgets, greedy(), pad_id=0)
    for row, budget, result in zip(rows, budgets, together):
        assert decode(small_model, [row], [budget], greedy(), pad_id=0) == [result]
        assert 0 < len(result[0]) <= budget


def sequence_logprob(model, context, generated, mask_position, gmask):
    """Sum of log p(generated token | everything before), by one full forward without a cache."""
    tokens = torch.tensor([context + generated])
    positions, blocked = glm_inputs(context, len(generated), mask_position, gmask)
    logits = model.forward(tokens, positions, blocked)[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    start = len(context) - 1
    return sum(float(logprobs[start + j, t]) for j, t in enumerate(generated))


@pytest.mark.parametrize("num_beams", [2, 4])
def test_beam_scores_match_a_recomputation_so_cache_reordering_is_right(small_model, num_beams):
    rows = [GenerationRow([30, 31, 500, 33, 12, 504], 2, False), GenerationRow([60, 61, 62, 501, 504], 3, True)]
    strategy = BeamSearchStrategy(num_beams, length_penalty=0.0, end_tokens=END_TOKENS, deterministic=True)
    results = decode(small_model, rows, [7, 7], strategy, pad_id=0)
    for row, beams, scores in zip(rows, results, strategy._end_scores):
        assert len(beams) == num_beams
        assert len({tuple(b) for b in beams}) == num_beams  # distinct beams
        for beam, score in zip(beams, scores):
            recomputed = sequence_logprob(small_model, row.context, beam, row.mask_position, row.gmask)
            assert recomputed == pytest.approx(score, abs=1e-3)


def test_cache_reorder_copies_moved_rows_after_the_shared_prefix_only():
    cache = KVCache(
        num_layers=2, batch_size=3, num_heads=1, max_length=6, head_dim=2, dtype=torch.float32, device="cpu"
    )
    for row in range(3):
        cache.storage[:, :, row] = float(row)
    cache.length = 5
    before = cache.storage.clone()
    cache.reorder(torch.tensor([1, 1, 0]), shared_prefix=2)
    assert torch.equal(cache.storage[:, :, :, :, :2], before[:, :, :, :, :2])  # shared prompt untouched
    assert (cache.storage[:, :, 0, :, 2:5] == 1).all()
    assert (cache.storage[:, :, 1, :, 2:5] == 1).all()
    assert (cache.storage[:, :, 2, :, 2:5] == 0).all()
    assert torch.equal(cache.storage[..., 5:, :], before[..., 5:, :])  # beyond the filled length untouched


def test_cache_expansion_repeats_rows_in_place_order():
    cache = KVCache(1, 2, 1, 4, 1, torch.float32, "cpu")
    cache.storage[:, :, 0], cache.storage[:, :, 1] = 3.0, 7.0
    cache.length = 2
    wide = cache.expanded(3)
    assert wide.batch_size == 6 and wide.length == 2
    assert wide.storage[0, 0, :, 0, :2, 0].tolist() == [[3, 3], [3, 3], [3, 3], [7, 7], [7, 7], [7, 7]]


def test_fp16_rotary_table_follows_the_sat_0_2_recipe_bit_for_bit():
    config = preset("glm-130b")
    cos, sin = rotary_table(config, torch.float16, num_positions=2048)
    d = config.head_dim
    inv_freq = (1.0 / 10000 ** (np.arange(0, d, 2, dtype=np.float32) / d)).astype(np.float16)
    angles = np.arange(2048, dtype=np.float16)[:, None] * inv_freq[None, :]  # fp16 product, fp16 result
    assert angles.dtype == np.float16
    expected_cos = np.cos(angles.astype(np.float32)).astype(np.float16)
    got = cos.numpy()
    assert np.array_equal(got[:, : d // 2], got[:, d // 2 :])  # frequency j covers dims j and j + d/2
    mismatched = np.count_nonzero(got[:, : d // 2] != expected_cos)
    assert mismatched <= got.size // 1000  # cos rounding may differ in the last bit at a few boundaries
    assert np.allclose(sin.numpy()[:, : d // 2].astype(np.float32), np.sin(angles.astype(np.float32)), atol=1e-3)


def test_rotary_recipes_differ_in_fp16_and_agree_in_fp32():
    config = preset("glm-tiny")
    fp16_02 = rotary_table(config, torch.float16)[0]
    fp16_04 = rotary_table(config.with_overrides(rotary_recipe="sat-0.4"), torch.float16)[0]
    assert not torch.equal(fp16_02, fp16_04)
    assert torch.equal(
        rotary_table(config, torch.float32)[0],
        rotary_table(config.with_overrides(rotary_recipe="sat-0.4"), torch.float32)[0],
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_fused_attention_keeps_the_reference_semantics(dtype):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 16, generator=gen).to(dtype) for _ in range(3))
    blocked = generation_blocked(4, 7)[None, None]
    ops = CpuOps(torch.device("cpu"), dtype)
    fused = ops.attention(q, k, v, blocked, layer_scale=3.0)
    exact = reference_attention(q.double(), k.double(), v.double(), blocked, 3.0)
    assert nmse(fused, exact) <= max_nmse("attention:prefill", dtype)


def test_fp16_on_cpu_runs_and_tracks_fp32(small_config):
    fp32 = build_model(small_config, torch.float32)
    fp16 = build_model(small_config, torch.float16)
    tokens = torch.randint(20, 400, (1, 8), generator=torch.Generator().manual_seed(1))
    positions, blocked = glm_inputs(list(range(6)), 2, mask_position=2, gmask=False)
    a = fp32.forward(tokens, positions, blocked)
    b = fp16.forward(tokens, positions, blocked).float()
    assert torch.isfinite(b).all()
    assert nmse(b, a) <= max_nmse("model:logits", torch.float16)  # fp32 stands in for the float64 reference


def test_a_batch_near_the_maximum_length_keeps_every_row_inside_the_position_range(small_model, small_config):
    """A long prompt with a small budget next to a short prompt with a large one: the aligned batch is wider than
    max_sequence_length, and the finished long row must not run past the rotary table."""
    limit = small_config.max_sequence_length
    long_row = GenerationRow(list(range(20, 20 + limit - 9)) + [501, 504], limit - 8, True)
    short_row = GenerationRow([40, 41, 501, 504], 2, True)
    budgets = [limit - len(long_row.context), limit - len(short_row.context)]
    assert max(len(r.context) for r in (long_row, short_row)) + max(budgets) > limit

    def greedy():
        return BaseStrategy(top_k=1, end_tokens=())

    together = decode(small_model, [long_row, short_row], budgets, greedy(), pad_id=0)
    assert [len(r[0]) for r in together] == budgets
    assert decode(small_model, [short_row], budgets[1:], greedy(), pad_id=0) == together[1:]


def test_batched_beam_search_matches_single_rows(small_model):
    rows = [GenerationRow([30, 31, 500, 33, 12, 504], 2, False), GenerationRow([60, 61, 62, 63, 64, 501, 504], 5, True)]
    budgets = [6, 9]

    def beams():
        return BeamSearchStrategy(
            3, length_penalty=1.0, end_tokens=END_TOKENS, no_repeat_ngram_size=2, deterministic=True
        )

    together = decode(small_model, rows, budgets, beams(), pad_id=0)
    for row, budget, result in zip(rows, budgets, together):
        assert decode(small_model, [row], [budget], beams(), pad_id=0) == [result]
