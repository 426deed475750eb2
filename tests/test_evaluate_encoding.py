"""Task encodings against hand-built tokens, positions and masks (docs/evaluation.md#task-encodings)."""

from types import SimpleNamespace

import pytest
import torch

from glm_engine.errors import TaskError
from glm_engine.evaluation.config import parse_task_config
from glm_engine.evaluation.generation import align_prompts, build_strategy, encode_generation
from glm_engine.evaluation.lambada import ICETK_INVALID_IDS, LambadaBeamSearch, choose_word, punctuation_bans
from glm_engine.evaluation.multiple_choice import encode_multiple_choice
from glm_engine.evaluation.perplexity import iter_lm_windows
from glm_engine.evaluation.registry import resolve_task
from glm_engine.generation.strategies import BeamSearchStrategy, GreedyStrategy
from glm_engine.model.glm130b.vocab import VocabLayout
from glm_engine.tokenizer import builtin_tokenizer

L = VocabLayout(text_offset=10, mask=500, gmask=501, smask=502, eod=503, sop=504, eop=505, enc=506, dblock=507, eos=12)
MASK, GMASK, SOP = L.mask, L.gmask, L.sop


def grid(*rows: str) -> torch.Tensor:
    """A bool matrix from rows of '1' (may attend) and '.' (blocked)."""
    return torch.tensor([[c == "1" for c in row] for row in rows])


def test_multi_token_choices_with_mask_share_the_mask_position():
    s = encode_multiple_choice([30, 31, 32], [[40, 41], [42, 43, 44]], L, False, False, 64)
    assert s.sample.ids == [30, 31, 32, MASK, SOP, 40, SOP, 42, 43]
    assert s.sample.positions == [0, 1, 2, 3, 3, 3, 3, 3, 3]
    assert s.targets == [([4, 5], [40, 41]), ([6, 7, 8], [42, 43, 44])]
    expected = grid(
        "1111.....",
        "1111.....",
        "1111.....",
        "1111.....",
        "11111....",  # first choice block: the context and itself, causally
        "111111...",
        "1111..1..",  # second block: blind to the first
        "1111..11.",
        "1111..111",
    )
    assert torch.equal(s.sample.allowed, expected)


def test_gmask_choice_positions_continue_and_restart_for_each_choice():
    s = encode_multiple_choice([30, 31, 32], [[40, 41], [42, 43, 44]], L, True, False, 64)
    assert s.sample.ids == [30, 31, 32, GMASK, SOP, 40, SOP, 42, 43]
    assert s.sample.positions == [0, 1, 2, 3, 4, 5, 4, 5, 6]


def test_a_mask_already_in_the_text_is_used_where_it_stands():
    s = encode_multiple_choice([30, MASK, 31], [[40, 41], [42]], L, False, False, 64)
    assert s.sample.ids == [30, MASK, 31, SOP, 40, SOP]
    assert s.sample.positions == [0, 1, 2, 1, 1, 1]
    assert s.targets == [([3, 4], [40, 41]), ([5], [42])]


def test_single_token_choices_share_one_sop_block():
    s = encode_multiple_choice([30, 31], [[40], [41], [42]], L, False, False, 64)
    assert s.sample.ids == [30, 31, MASK, SOP]
    assert s.sample.positions == [0, 1, 2, 2]
    assert s.targets == [([3], [40]), ([3], [41]), ([3], [42])]
    g = encode_multiple_choice([30, 31], [[40], [41]], L, True, False, 64)
    assert g.sample.ids == [30, 31, GMASK, SOP] and g.sample.positions == [0, 1, 2, 3]


def test_truncation_keeps_the_last_tokens_leaving_room_for_choices_mask_and_sop():
    text = list(range(30, 50))
    s = encode_multiple_choice(text, [[40, 41], [42, 43]], L, False, False, 12)  # room: 12 - 4 - 2 = 6
    assert s.sample.ids[:7] == [44, 45, 46, 47, 48, 49, MASK]
    single = encode_multiple_choice(text, [[40], [41]], L, False, False, 12)  # single tokens count as 1: 12 - 3
    assert single.sample.ids == [*range(41, 50), MASK, SOP]
    with pytest.raises(TaskError, match="no room"):
        encode_multiple_choice(text, [[40] * 6, [41] * 6], L, False, False, 12)


def test_unidirectional_choice_context_is_causal():
    s = encode_multiple_choice([30, 31], [[40, 41], [42, 43]], L, True, True, 64)
    assert torch.equal(s.sample.allowed[:3, :3], torch.ones(3, 3, dtype=torch.bool).tril())
    assert s.sample.allowed[3:, :3].all()


def test_generation_bidirectional_appends_mask_and_sop():
    p = encode_generation([30, 31, 32], L, False, False, 8, 64)
    assert p.context == [30, 31, 32, MASK, SOP] and p.mask_position == 3 and not p.gmask
    aligned = align_prompts([p], 8, L.pad)
    assert aligned.position_ids[0].tolist() == [0, 1, 2, 3, 3] + [3] * 8  # sop and answers at the mask
    assert not aligned.blocked[0, 0, :4, :4].any()  # the text and the mask see each other
    assert aligned.blocked[0, 0, 5, 6] and not aligned.blocked[0, 0, 6, 5]


def test_generation_blank_fills_the_mask_in_the_text():
    p = encode_generation([30, MASK, 31], L, False, False, 8, 64)
    assert p.context == [30, MASK, 31, SOP] and p.mask_position == 1
    assert align_prompts([p], 4, L.pad).position_ids[0].tolist() == [0, 1, 2, 1, 1, 1, 1, 1]


def test_generation_unidirectional_puts_gmask_and_sop_first_and_is_causal():
    p = encode_generation([30, 31, 32], L, True, True, 4, 64)
    assert p.context == [GMASK, SOP, 30, 31, 32] and p.gmask and p.causal
    aligned = align_prompts([p], 4, L.pad)
    assert aligned.position_ids[0].tolist() == list(range(9))
    assert torch.equal(aligned.blocked[0, 0], ~torch.ones(9, 9, dtype=torch.bool).tril())
    gmask = encode_generation([30, 31, 32], L, True, False, 4, 64)
    assert gmask.context == [30, 31, 32, GMASK, SOP] and gmask.gmask
    with pytest.raises(TaskError, match="blank"):
        encode_generation([30, GMASK], L, True, True, 4, 64)


def test_generation_truncation_leaves_room_for_the_answer():
    p = encode_generation(list(range(30, 50)), L, False, False, 8, 16)  # 16 - 8 - 2 = 6 tokens of text
    assert p.context == [44, 45, 46, 47, 48, 49, MASK, SOP]


def test_unidirectional_lm_windows_are_causal_and_score_every_token_once():
    tokens = list(range(30, 75))  # 45 tokens, windows of 15, 5 new tokens each after the first
    for unidirectional in (False, True):
        windows = list(iter_lm_windows(tokens, 15, 5, GMASK, SOP, unidirectional))
        assert [t for w in windows for t in w.targets] == tokens
        for w in windows:
            scored = w.sample.ids[w.first_scored : w.first_scored + len(w.targets)]
            assert scored[0] == SOP or scored[0] == tokens[tokens.index(w.targets[0]) - 1]  # teacher forcing
            assert len(w.sample.ids) <= 16
    later = list(iter_lm_windows(tokens, 15, 5, GMASK, SOP, True))[1]
    assert later.sample.ids[:2] == [GMASK, SOP] and later.first_scored == 11  # the last prompt token predicts
    n = len(later.sample.ids)
    assert torch.equal(later.sample.allowed, torch.ones(n, n, dtype=torch.bool).tril())
    bidirectional = list(iter_lm_windows(tokens, 15, 5, GMASK, SOP, False))[1]
    assert bidirectional.sample.ids[10:12] == [GMASK, SOP] and bidirectional.sample.allowed[:11, :11].all()


def test_lambada_bans_punctuation_prefixes_at_the_start_of_the_answer():
    search = LambadaBeamSearch([(7,), (3, 8)], num_beams=2, end_tokens=(2,), deterministic=True)
    search.start([[30, 31]])
    logits = torch.full((1, 1, 10), -5.0)
    logits[0, 0, 7], logits[0, 0, 3], logits[0, 0, 4] = 5.0, 4.0, 3.0  # 7 is best but banned as a first token
    tokens, _ = search.step(logits)
    assert tokens[0].tolist() == [3, 4]
    logits = torch.full((1, 2, 10), -5.0)
    logits[:, :, 8] = 5.0  # 8 is banned only after 3 (the beam that generated the prefix's start)
    logits[:, :, 9] = 1.0
    tokens, parents = search.step(logits)
    kept = set(zip(parents[0].tolist(), tokens[0].tolist()))
    assert (0, 8) not in kept and kept == {(0, 9), (1, 8)}


def test_lambada_predicts_the_first_word_of_the_first_beam_ending_in_punctuation():
    assert choose_word(["the dog ran", "cat .", "mouse !"]) == "cat"
    assert choose_word(["the dog ran", "cat"]) == "the"
    assert choose_word([""]) == ""


def test_lambada_splits_words_as_the_reference():
    # text.strip().split(" "): a newline does not split words
    assert choose_word(["dog barked", "cat\n."]) == "dog"
    assert choose_word(["door\nopened .", "cat ."]) == "door\nopened"
    # `spl[1] in string.punctuation` is a substring test: ".," is not a substring, an empty word (two spaces) is
    assert choose_word(["dog barked", "cat .,"]) == "dog"
    assert choose_word(["dog barked", "cat  ."]) == "cat"
    assert choose_word(["dog barked", 'cat !"']) == "cat"


def test_lambada_punctuation_bans():
    tokenizer = builtin_tokenizer()
    invalid, prefixes = punctuation_bans(tokenizer)
    assert all(len(p) >= 1 for p in prefixes)
    assert tuple(tokenizer.encode(".")) in prefixes and tuple(tokenizer.encode("!")) in prefixes  # each char's tokens
    assert (46010,) in prefixes and (146337,) in prefixes  # the reference's own banned prefixes
    assert set(ICETK_INVALID_IDS) <= set(invalid)  # GLM-130B's layout: the reference's own icetk ids too


def test_lambada_bans_nothing_when_greedy():
    # the reference swaps its banning strategy in for BeamSearchStrategy only; greedy keeps GenerationTask's
    engine = SimpleNamespace(tokenizer=builtin_tokenizer(), banned_tokens=())
    config = parse_task_config({"name": "l", "type": "gen", "path": ".", "module": "tasks.lambada.task.LAMBADA"})
    greedy = resolve_task(config).new_strategy(engine)()
    assert isinstance(greedy, GreedyStrategy) and greedy.invalid_slices == ()


def test_evaluation_beam_search_counts_contexts_padded_to_32():
    engine = SimpleNamespace(tokenizer=builtin_tokenizer(), banned_tokens=())
    common = {"name": "l", "type": "gen", "path": ".", "sampling_strategy": "BeamSearchStrategy"}
    plain = build_strategy(parse_task_config(common), L)
    assert isinstance(plain, BeamSearchStrategy) and plain.context_tile == 32
    lambada = resolve_task(parse_task_config({**common, "module": "tasks.lambada.task.LAMBADA"})).new_strategy(engine)()
    assert isinstance(lambada, LambadaBeamSearch) and lambada.invalid_slices and lambada.context_tile == 32
