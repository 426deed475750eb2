"""Parity with the reference: logits of SwissArmyTransformer's GLM130B, stored by tools/golden/make_sat_golden.py.

The golden file holds a tiny fp16 GLM-130B-shaped model, two prompts (a [MASK] in the middle, a trailing [gMASK])
and, for both rotary recipes, SAT's prefill logits and 32 greedy decode steps run with its KV cache. We teacher-force
SAT's tokens through our own prefill + cached decode and compare.
"""

import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from glm_engine.backends.registry import get_backend, op_table_for
from glm_engine.model.glm130b.config import GLMConfig
from glm_engine.model.glm130b.rotary import rotary_table
from glm_engine.model.glm130b.vocab import VocabLayout
from glm_engine.model.graph import DecoderModel

GOLDEN = Path(__file__).parent / "golden" / "sat_glm130b_tiny.safetensors"
# The bar for fp16 logits against the reference.
MAX_NMSE = 1e-5
# Argmax must agree wherever SAT's top-2 gap exceeds this (a few fp16 ulps at these logit magnitudes).
CLEAR_MARGIN = 0.1


@pytest.fixture(scope="module")
def golden():
    with safe_open(str(GOLDEN), framework="pt") as handle:
        return handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is no dict)


def nmse(ours: torch.Tensor, reference: torch.Tensor) -> float:
    ours, reference = ours.double(), reference.double()
    return float(((ours - reference) ** 2).sum() / (reference**2).sum())


# Every op-level backend that can run here is held to the same bar.
BACKENDS = [name for name in ("cpu", "cuda", "rocm_dcu", "ascend") if get_backend(name).availability().ok]


def model_for(golden, recipe: str, backend_name: str = "cpu") -> DecoderModel:
    metadata, tensors = golden
    ids = json.loads(metadata["special_ids"])
    layout = VocabLayout(
        text_offset=0,
        mask=ids["MASK"],
        gmask=ids["gMASK"],
        smask=249,
        eod=248,
        sop=ids["sop"],
        eop=ids["eop"],
        enc=247,
        dblock=246,
        eos=ids["eos"],
        pad=0,
    )
    config = GLMConfig(**json.loads(metadata["config"]), rotary_recipe=recipe, vocab_layout=layout)
    state_dict = {k: v for k, v in tensors.items() if k.startswith("transformer.")}
    backend = get_backend(backend_name)
    return DecoderModel.from_state_dict(config, state_dict, op_table_for(backend, torch.float16), source=str(GOLDEN))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("recipe", ["sat-0.2", "sat-0.4"])
@pytest.mark.parametrize("case", ["mask", "gmask"])
def test_fp16_logits_match_swissarmytransformer(golden, recipe, case, backend):
    _, tensors = golden
    model = model_for(golden, recipe, backend)
    prefix = f"cases.{recipe}.{case}."
    ids, positions, blocked = (
        tensors[prefix + k].to(model.device) for k in ("input_ids", "position_ids", "attention_mask")
    )
    greedy, reference_steps = tensors[prefix + "greedy_tokens"].to(model.device), tensors[prefix + "step_logits"]
    ctx = ids.shape[1]

    prefill = model.forward(ids, positions[:, :ctx], blocked[..., :ctx, :ctx]).cpu()
    assert nmse(prefill, tensors[prefix + "prefill_logits"]) <= MAX_NMSE

    cache = model.new_cache(1, ctx + len(greedy))
    steps = [model.forward(ids, positions[:, :ctx], blocked[..., :ctx, :ctx], cache, last_only=True)[0, -1]]
    for k in range(1, len(greedy)):  # teacher-forced on the reference's tokens
        col = ctx + k - 1
        logits = model.forward(
            greedy[k - 1].view(1, 1), positions[:, col : col + 1], blocked[..., col : col + 1, : col + 1], cache
        )
        steps.append(logits[0, -1])
    steps = torch.stack(steps).cpu()
    greedy = greedy.cpu()
    assert len(greedy) >= 32
    assert nmse(steps, reference_steps) <= MAX_NMSE

    top2 = reference_steps.float().topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > CLEAR_MARGIN
    assert clear.sum() >= 24  # the comparison is about most steps, not a few
    assert torch.equal(steps.argmax(-1)[clear], greedy[clear])


def test_golden_greedy_output_is_not_trivially_repetitive(golden):
    """Weights strong enough that greedy decoding does more than repeat the last token."""
    _, tensors = golden
    for key in (k for k in tensors if k.endswith("greedy_tokens")):
        tokens = tensors[key].tolist()
        assert len(set(tokens)) >= 10
        assert sum(a == b for a, b in itertools.pairwise(tokens)) <= 3


@pytest.mark.parametrize("recipe", ["sat-0.2", "sat-0.4"])
def test_fp16_rotary_tables_equal_swissarmytransformer_bit_for_bit(golden, recipe):
    _, tensors = golden
    config = model_for(golden, recipe).config
    cos, sin = rotary_table(config, torch.float16, num_positions=config.max_sequence_length)
    assert torch.equal(cos, tensors[f"rotary.{recipe}.cos"])
    assert torch.equal(sin, tensors[f"rotary.{recipe}.sin"])


def test_the_two_rotary_recipes_really_differ_in_fp16(golden):
    _, tensors = golden
    assert not torch.equal(tensors["rotary.sat-0.2.cos"], tensors["rotary.sat-0.4.cos"])
