"""Generation strategies against the reference semantics (docs/glm-semantics.md#generation-strategies), on hand-made
logits."""

import math

import pytest
import torch

from glm_engine.generation.strategies import (
    FILTER_VALUE,
    BaseStrategy,
    BeamSearchStrategy,
    sampling_candidates,
    top_k_top_p_filter,
)

EOP, EOS = 8, 9


def logits_from_probs(probs: list[float]) -> torch.Tensor:
    return torch.tensor([math.log(p) if p > 0 else -1e4 for p in probs])


def test_top_k_keeps_ties_with_the_kth_value():
    logits = torch.tensor([[5.0, 3.0, 3.0, 1.0]])
    filtered = top_k_top_p_filter(logits, top_k=2)
    assert (filtered[0] > FILTER_VALUE).tolist() == [True, True, True, False]


def test_top_p_keeps_the_token_that_crosses_the_threshold():
    logits = logits_from_probs([0.5, 0.3, 0.15, 0.05]).unsqueeze(0)
    kept = top_k_top_p_filter(logits, top_p=0.6)[0] > FILTER_VALUE
    assert kept.tolist() == [True, True, False, False]  # 0.5 < 0.6, 0.8 crosses: both kept
    kept = top_k_top_p_filter(logits, top_p=0.4)[0] > FILTER_VALUE
    assert kept.tolist() == [True, False, False, False]  # the first token always survives


def test_top_k_applies_before_top_p():
    logits = logits_from_probs([0.4, 0.3, 0.2, 0.1]).unsqueeze(0)
    kept = top_k_top_p_filter(logits, top_k=2, top_p=0.9)[0] > FILTER_VALUE
    # after top-k the renormalised mass is 4/7, 3/7: 4/7 < 0.9 so both survive, nothing beyond k
    assert kept.tolist() == [True, True, False, False]


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 0.0), (1, 0.0), (40, 0.0), (0, 0.3), (0, 0.95), (50, 0.7)])
@pytest.mark.parametrize("scale", [0.5, 8.0])
def test_fast_candidate_search_equals_the_reference_filter(top_k, top_p, scale):
    gen = torch.Generator().manual_seed(int(scale * 100) + top_k)
    logits = torch.randn(20000, generator=gen) * scale
    reference = (top_k_top_p_filter(logits.unsqueeze(0), top_k, top_p)[0] > FILTER_VALUE).nonzero().flatten()
    fast = sampling_candidates(logits, top_k, top_p)
    assert sorted(fast.tolist()) == reference.tolist()


def test_base_strategy_greedy_and_end_tokens():
    strategy = BaseStrategy(top_k=1, end_tokens=(EOP, EOS))
    strategy.start([[1, 2], [3]])
    step1 = torch.full((2, 1, 10), -5.0)
    step1[0, 0, 4] = 1.0
    step1[1, 0, EOP] = 1.0
    tokens, parents = strategy.step(step1)
    assert tokens.tolist() == [[4], [EOP]] and parents.tolist() == [[0], [0]]
    assert not strategy.is_done
    step2 = torch.full((2, 1, 10), -5.0)
    step2[:, 0, EOS] = 1.0
    tokens, _ = strategy.step(step2)
    assert tokens.tolist() == [[EOS], [-1]]  # a finished row gets -1
    assert strategy.is_done
    assert strategy.finalize() == [[[4, EOS]], [[EOP]]]  # end tokens are kept


def test_sampling_is_reproducible_with_a_seeded_generator():
    logits = torch.randn(3, 1, 1000)

    def run(seed):
        strategy = BaseStrategy(temperature=0.8, top_p=0.9, generator=torch.Generator().manual_seed(seed))
        strategy.start([[0]] * 3)
        return [strategy.step(logits)[0].tolist() for _ in range(5)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def make_beam_logits(batch, beams, vocab, favourites, gap=1.0):
    """Logits where (row, beam) prefers the given tokens in order, ``gap`` apart."""
    logits = torch.full((batch, beams, vocab), -20.0)
    for (row, beam), tokens in favourites.items():
        for rank, token in enumerate(tokens):
            logits[row, beam, token] = -gap * rank
    return logits


def test_beam_search_expands_one_beam_into_num_beams_and_reports_parents():
    strategy = BeamSearchStrategy(2, end_tokens=(EOP, EOS), deterministic=True)
    strategy.start([[1, 2, 3]])
    tokens, parents = strategy.step(make_beam_logits(1, 1, 10, {(0, 0): [4, 5, 6]}, gap=5.0))
    assert tokens.tolist() == [[4, 5]] and parents.tolist() == [[0, 0]]
    tokens, parents = strategy.step(make_beam_logits(1, 2, 10, {(0, 0): [6, 7], (0, 1): [7, 6]}))
    # beam 0 (token 4) is far ahead, so both of its continuations beat beam 1's best
    assert tokens.tolist() == [[6, 7]] and parents.tolist() == [[0, 0]]
    tokens, parents = strategy.step(make_beam_logits(1, 2, 10, {(0, 0): [3], (0, 1): [2]}, gap=5.0))
    assert tokens.tolist() == [[3, 2]] and parents.tolist() == [[0, 1]]


def test_length_penalty_counts_the_context_tokens():
    strategy = BeamSearchStrategy(1, length_penalty=1.0, end_tokens=(EOP,), deterministic=True)
    context = list(range(7))
    strategy.start([context])
    strategy._add_end_beam(0, -2.0, [4, EOP])
    # GNMT penalty with len(beam) = 7 context + 2 generated = 9: score / ((5 + 9) / 6)
    assert strategy._end_scores[0][0] == pytest.approx(-2.0 / (14 / 6))


def best_end_beam(context_tile: int, contexts: list[list[int]]) -> list[int]:
    strategy = BeamSearchStrategy(2, length_penalty=1.0, end_tokens=(2,), deterministic=True, context_tile=context_tile)
    strategy.start(contexts)
    strategy._add_end_beam(0, -2.0, [9, 2])  # ended after 2 tokens
    strategy._add_end_beam(0, -2.3, [9, 8, 7, 6, 2])  # ended after 5 tokens
    strategy._done = [True] * len(contexts)
    return strategy.finalize()[0][0]


def test_context_tile_counts_the_context_padded_as_the_reference_evaluation_does():
    # 5-token context: -2.0 / ((5 + 7) / 6) = -1.0 loses to -2.3 / ((5 + 10) / 6) = -0.92
    assert best_end_beam(0, [[1] * 5]) == [9, 8, 7, 6, 2]
    # padded to 32 (the reference's collate): -2.0 / (39 / 6) = -0.308 beats -2.3 / (42 / 6) = -0.329
    assert best_end_beam(32, [[1] * 5]) == [9, 2]
    # the micro-batch's longest context sets the padded length of every row: 33 tokens pad to 64
    strategy = BeamSearchStrategy(1, length_penalty=1.0, end_tokens=(2,), context_tile=32)
    strategy.start([[1] * 5, [1] * 33])
    strategy._add_end_beam(0, -2.0, [9, 2])
    assert strategy._end_scores[0][0] == pytest.approx(-2.0 / ((5 + 66) / 6))


def test_context_tile_enters_the_stop_test():
    # one ended beam at -2.0 after 2 tokens; the running beam scores -1.9 after 1 generated token
    def done_after_step(context_tile: int) -> bool:
        strategy = BeamSearchStrategy(
            1, length_penalty=1.0, end_tokens=(2,), deterministic=True, context_tile=context_tile
        )
        strategy.start([[1] * 5])
        strategy._add_end_beam(0, -2.0, [9, 2])
        logits = torch.full((1, 1, 10), -30.0)
        logits[0, 0, 4] = 0.0
        strategy._scores = torch.tensor([[-1.9]])
        strategy.step(logits)
        return strategy._done[0]

    # real lengths: -2.0 / (12 / 6) = -1.0 vs the running beam's bound -1.9 / (11 / 6) = -1.036: done
    assert done_after_step(0)
    # padded: -2.0 / (39 / 6) = -0.308 vs -1.9 / (38 / 6) = -0.300: not done
    assert not done_after_step(32)


def test_end_beams_insert_before_equal_scores_and_keep_the_best():
    strategy = BeamSearchStrategy(2, length_penalty=0.0, end_tokens=(EOP,))
    strategy.start([[0]])
    strategy._add_end_beam(0, -1.0, [1])
    strategy._add_end_beam(0, -1.0, [2])
    strategy._add_end_beam(0, -3.0, [3])
    assert strategy._end_beams[0] == [[2], [1]]


def test_no_repeat_ngram_bans_generated_ngrams_only():
    strategy = BeamSearchStrategy(1, no_repeat_ngram_size=2, end_tokens=(EOP,), deterministic=True)
    context = [5, 6]  # the context's own bigram (5, 6) must not be banned
    strategy.start([context])
    strategy.step(make_beam_logits(1, 1, 10, {(0, 0): [5, 3]}))  # generates 5 after 6: records bigram (6, 5)
    tokens, _ = strategy.step(make_beam_logits(1, 1, 10, {(0, 0): [6, 3]}))
    assert tokens.tolist() == [[6]]  # (5, 6) occurred only in the context: allowed
    tokens, _ = strategy.step(make_beam_logits(1, 1, 10, {(0, 0): [5, 3]}))
    assert tokens.tolist() == [[3]]  # (6, 5) was generated before: banned


def test_min_gen_length_holds_back_end_tokens():
    strategy = BeamSearchStrategy(1, min_gen_length=2, end_tokens=(EOP, EOS), deterministic=True)
    strategy.start([[1]])
    favour_end = make_beam_logits(1, 1, 10, {(0, 0): [EOP, 4]})
    assert strategy.step(favour_end)[0].tolist() == [[4]]
    assert strategy.step(favour_end)[0].tolist() == [[4]]
    strategy.step(favour_end)  # now the end token is allowed and ends a beam
    assert strategy._end_beams[0] and strategy._end_beams[0][0][-1] == EOP


def test_beam_search_is_done_when_no_running_beam_can_beat_the_ended_ones():
    strategy = BeamSearchStrategy(1, length_penalty=1.0, end_tokens=(EOP,), deterministic=True)
    strategy.start([[1, 2]])
    logits = torch.full((1, 1, 10), -30.0)
    logits[0, 0, EOP] = 0.0
    logits[0, 0, 4] = -10.0
    strategy.step(logits)
    assert strategy.is_done
    assert strategy.finalize() == [[[EOP]]]


def test_finish_turns_running_beams_into_results():
    strategy = BeamSearchStrategy(2, end_tokens=(EOP,), deterministic=True)
    strategy.start([[1]])
    strategy.step(make_beam_logits(1, 1, 10, {(0, 0): [4, 5]}))
    strategy.finish(0)
    assert strategy.is_done
    assert strategy.finalize() == [[[4], [5]]]


def test_stochastic_beam_search_samples_candidates_reproducibly_per_seed():
    logits = torch.randn(1, 1, 50, generator=torch.Generator().manual_seed(0)) * 0.1  # a flat distribution

    def run(seed, deterministic=False):
        strategy = BeamSearchStrategy(
            3, end_tokens=(EOP,), deterministic=deterministic, generator=torch.Generator().manual_seed(seed)
        )
        strategy.start([[1]])
        return strategy.step(logits)[0].tolist()

    assert run(1) == run(1)
    assert len({str(run(seed)) for seed in range(6)}) > 1  # sampled: seeds differ
    assert run(1, deterministic=True) == run(2, deterministic=True) == [logits[0, 0].topk(3).indices.tolist()]


def test_beam_search_stop_rule_penalises_the_full_length_context_included():
    """An ended beam scoring e (about -0.74) against a running beam at e - 0.1 that is one token longer: with a short
    prompt the longer beam's smaller penalty keeps it alive; with a long prompt that difference is negligible."""

    def done_after_two_steps(context_length):
        strategy = BeamSearchStrategy(1, length_penalty=1.0, end_tokens=(EOP,), deterministic=True)
        strategy.start([list(range(context_length))])
        first = torch.full((1, 1, 10), -50.0)
        first[0, 0, EOP], first[0, 0, 4] = 0.0, 0.1
        end_score, running_score = torch.log_softmax(first[0, 0], 0)[[EOP, 4]].tolist()
        strategy.step(first)
        assert not strategy.is_done
        needed = (end_score - 0.1) - running_score  # log-prob the running beam's next token must have
        second = torch.full((1, 1, 10), -50.0)
        second[0, 0, 5], second[0, 0, 6] = 0.0, math.log(math.exp(-needed) - 1)
        strategy.step(second)
        assert strategy._scores[0, 0].item() == pytest.approx(end_score - 0.1, abs=1e-5)
        return strategy.is_done

    assert not done_after_two_steps(0)  # e / (6/6) < (e - 0.1) / (7/6)
    assert done_after_two_steps(100)  # e / (106/6) >= (e - 0.1) / (107/6)
