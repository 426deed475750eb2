"""Masks and position ids exactly as the reference's get_masks_and_position_ids
(docs/glm-semantics.md#masks-and-positions)."""

import pytest
import torch

from glm_engine.errors import InputError
from glm_engine.generation.blank_filling import plan_prompt
from glm_engine.generation.masks import GenerationRow, align_left, generation_blocked, generation_positions
from glm_engine.model.glm130b.vocab import VocabLayout
from glm_engine.tokenizer import builtin_tokenizer


def reference_mask(context_length: int, total: int) -> torch.Tensor:
    """The reference recipe, written out: tril, then the whole prefix, then `< 0.5` for blocked."""
    m = torch.ones(total, total).tril()
    m[:, : context_length - 1] = 1
    return m < 0.5


def test_mask_position_rule_for_mask_tokens():
    # [MASK] at index 3 of a 9-token prompt, sop at 9 (the reference's worked example)
    positions = generation_positions(context_length=10, total_length=14, mask_position=3, gmask=False)
    assert positions.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 3, 3, 3, 3, 3]


def test_gmask_positions_continue():
    positions = generation_positions(context_length=10, total_length=14, mask_position=8, gmask=True)
    assert positions.tolist() == list(range(14))


def test_prefix_is_bidirectional_and_generation_is_causal():
    blocked = generation_blocked(context_length=4, total_length=6)
    assert torch.equal(blocked, reference_mask(4, 6))
    allowed = ~blocked
    assert allowed[0, :3].all() and not allowed[0, 3:].any()  # prompt rows see the prompt, not sop or later
    assert allowed[2, :3].all()  # the last prompt token (e.g. eos) is in the bidirectional part
    assert allowed[3, :4].all() and not allowed[3, 4:].any()  # sop sees prompt + itself
    assert allowed[5].all()  # the latest generated token sees everything before it


@pytest.fixture(scope="module")
def tokenizer():
    return builtin_tokenizer()


def test_plan_with_one_mask_appends_eos_when_text_continues(tokenizer):
    layout = tokenizer.layout
    plan = plan_prompt("The sky is [MASK] today", tokenizer, 2048)
    assert plan.mask_id == layout.mask and not plan.gmask
    assert plan.tokens[-1] == layout.eos
    assert plan.tokens.count(layout.mask) == 1
    assert plan.text == "The sky is [MASK] today"


def test_plan_ending_with_a_mask_has_no_eos(tokenizer):
    plan = plan_prompt("The sky is [MASK]", tokenizer, 2048)
    assert plan.tokens[-1] == tokenizer.layout.mask


def test_plan_without_mask_appends_gmask_and_says_so(tokenizer):
    layout = tokenizer.layout
    plan = plan_prompt("Once upon a time", tokenizer, 2048)
    assert plan.gmask and plan.mask_id == layout.gmask
    assert plan.tokens[-1] == layout.gmask and layout.eos not in plan.tokens
    assert plan.text == "Once upon a time [gMASK]"


def test_plan_prefers_mask_over_smask_and_smask_over_gmask(tokenizer):
    layout = tokenizer.layout
    both = plan_prompt("a [sMASK] b [MASK] c", tokenizer, 2048)
    assert both.mask_id == layout.mask and not both.gmask
    smask = plan_prompt("a [sMASK] b [gMASK]", tokenizer, 2048)
    assert smask.mask_id == layout.smask and not smask.gmask
    assert smask.tokens[-1] == layout.gmask  # ends with a mask: no eos


def test_plan_with_several_masks_tokenizes_segments_separately(tokenizer):
    layout = tokenizer.layout
    plan = plan_prompt("One [MASK] two [MASK] three", tokenizer, 2048)
    expected = (
        tokenizer.encode("One ")
        + [layout.mask]
        + tokenizer.encode(" two ")
        + [layout.mask]
        + tokenizer.encode(" three")
        + [layout.eos]
    )
    assert plan.tokens == expected


def test_too_long_input_is_a_clear_error(tokenizer):
    with pytest.raises(InputError, match="text too long"):
        plan_prompt("word " * 100, tokenizer, 16)


def test_left_aligned_rows_see_exactly_what_they_see_alone():
    rows = [GenerationRow([5, 6, 7, 8, 9], 2, False), GenerationRow([5, 6, 9], 1, True)]
    batch = align_left(rows, total_length=8, pad_id=0)
    assert batch.context_length == 5
    # the short row, shifted by its padding, matches its own mask and positions
    alone = generation_blocked(3, 6)
    assert torch.equal(batch.blocked[1, 0, 2:, 2:], alone)
    assert batch.blocked[1, 0, 2:, :2].all()  # nobody attends to padding
    assert batch.position_ids[1, 2:].tolist() == generation_positions(3, 6, 1, True).tolist()
    assert batch.input_ids[1].tolist()[:5] == [0, 0, 5, 6, 9]
    # pad rows attend to themselves only, so no softmax row is empty
    assert (~batch.blocked[1, 0, :2]).sum(-1).tolist() == [1, 1]


def test_custom_layout_ids_drive_the_plan():
    layout = VocabLayout(mask=150100, gmask=150101, smask=150102, sop=150104, eos=20002)
    tok = builtin_tokenizer(layout)
    plan = plan_prompt("x [MASK] y", tok, 2048)
    assert layout.mask in plan.tokens and 150000 not in plan.tokens
