"""Parity with the reference: logits of THUDM/chatglm-6b's modeling_chatglm.py, stored by
tools/golden/make_chatglm_golden.py.

The golden file holds a tiny random ChatGLM (3 layers, two rotary halves of 8 dims, vocab 128), three prompts
([gMASK] as chat() builds it, [MASK] without [gMASK], [MASK] with [gMASK]) with the position ids and masks the
reference built for them, and, in fp32 and fp16, its prefill logits and 16 greedy steps run by transformers'
``generate`` with the reference's KV cache. We teacher-force the reference's tokens through our own prefill and
cached decode and compare.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from glm_engine.backends.registry import get_backend, op_table_for
from glm_engine.generation.strategies import GreedyStrategy
from glm_engine.model.chatglm.chat import chatglm_batch, generate_ids
from glm_engine.model.chatglm.config import ChatGLMConfig
from glm_engine.model.chatglm.rotary import chatglm_rotary_table
from glm_engine.model.graph import DecoderModel

GOLDEN = Path(__file__).parent / "golden" / "chatglm6b_tiny.safetensors"
CASES = ("gmask", "mask", "mask_gmask")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# The bar for fp32 logits (measured: 5e-14 to 8e-14). fp16: both sides round every op to fp16, but the CPU
# backend computes prefill-sized fp16 GEMMs in fp32 and rounds once where torch's fp16 path rounds its own way, so a
# logit may move by an fp16 ulp (measured: 0 to 1.5e-7, one ulp at |logit| ~ 4 at most); the bar leaves 10x room.
MAX_NMSE = {"fp32": 1e-10, "fp16": 2e-6}


@pytest.fixture(scope="module")
def golden():
    with safe_open(str(GOLDEN), framework="pt") as handle:
        return handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)


def nmse(ours: torch.Tensor, reference: torch.Tensor) -> float:
    ours, reference = ours.double(), reference.double()
    return float(((ours - reference) ** 2).sum() / (reference**2).sum())


def golden_config(golden) -> ChatGLMConfig:
    metadata, _ = golden
    return ChatGLMConfig.from_hf_dict(json.loads(metadata["config"]))


def golden_model(golden, dtype: torch.dtype) -> DecoderModel:
    _, tensors = golden
    config = golden_config(golden)
    state_dict = {k: v for k, v in tensors.items() if k.startswith(("transformer.", "lm_head."))}
    return DecoderModel.from_state_dict(config, state_dict, op_table_for(get_backend("cpu"), dtype), source=str(GOLDEN))


def teacher_forced(model: DecoderModel, tensors, case: str, dtype_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Our prefill logits (all positions) and the logits of each greedy step, fed the reference's tokens and the
    reference's own decode positions."""
    prefix = f"cases.{case}."
    ids, positions, blocked = (tensors[prefix + k] for k in ("input_ids", "position_ids", "attention_mask"))
    step_positions = tensors[f"{dtype_name}.{case}.step_position_ids"]
    greedy = tensors[f"{dtype_name}.{case}.greedy_tokens"]
    prefill = model.forward(ids, positions, blocked)[0]
    cache = model.new_cache(1, ids.shape[1] + len(greedy))
    steps = [model.forward(ids, positions, blocked, cache, last_only=True)[0, -1]]
    for k in range(1, len(greedy)):
        nothing_blocked = torch.zeros(1, 1, 1, cache.length + 1, dtype=torch.bool)
        logits = model.forward(greedy[k - 1].view(1, 1), step_positions[k - 1].view(1, 2, 1), nothing_blocked, cache)
        steps.append(logits[0, -1])
    return prefill, torch.stack(steps)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_logits_match_the_reference_modeling_code(golden, case, dtype_name):
    _, tensors = golden
    model = golden_model(golden, DTYPES[dtype_name])
    with torch.inference_mode():
        prefill, steps = teacher_forced(model, tensors, case, dtype_name)
    reference_steps = tensors[f"{dtype_name}.{case}.step_logits"]
    assert nmse(prefill, tensors[f"{dtype_name}.{case}.prefill_logits"]) <= MAX_NMSE[dtype_name]
    assert nmse(steps, reference_steps) <= MAX_NMSE[dtype_name]
    assert torch.equal(steps.argmax(-1), tensors[f"{dtype_name}.{case}.greedy_tokens"])


def test_golden_cases_exercise_both_mask_rules(golden):
    """[MASK] without [gMASK]: <sop> takes the [MASK] index; with [gMASK] (also beside a [MASK]) the [gMASK] index."""
    _, tensors = golden
    config = golden_config(golden)
    for case in CASES:
        ids = tensors[f"cases.{case}.input_ids"][0].tolist()
        mask_token = config.gmask_token_id if config.gmask_token_id in ids else config.mask_token_id
        positions = tensors[f"cases.{case}.position_ids"][0]
        assert positions[0, -1] == ids.index(mask_token)
        assert positions[1, -1] == 1
    mask_ids = tensors["cases.mask.input_ids"][0].tolist()
    assert config.gmask_token_id not in mask_ids and config.mask_token_id in mask_ids  # the [MASK] rule is exercised


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_rotary_tables_equal_the_reference_bit_for_bit(golden, dtype_name):
    _, tensors = golden
    config = golden_config(golden)
    reference_cos, reference_sin = tensors[f"rotary.{dtype_name}.cos"], tensors[f"rotary.{dtype_name}.sin"]
    cos, sin = chatglm_rotary_table(config.rotary_dim, reference_cos.shape[0], DTYPES[dtype_name])
    assert torch.equal(cos, reference_cos)
    assert torch.equal(sin, reference_sin)


def test_golden_greedy_output_is_varied(golden):
    _, tensors = golden
    for key in (k for k in tensors if k.endswith("greedy_tokens")):
        assert len(set(tensors[key].tolist())) >= 8


@pytest.mark.parametrize("case", CASES)
def test_our_inputs_equal_the_references_positions_and_masks(golden, case):
    """chatglm_batch builds the prefill positions/mask and every decode position the reference built."""
    _, tensors = golden
    config = golden_config(golden)
    ids = tensors[f"cases.{case}.input_ids"][0].tolist()
    steps = tensors[f"fp32.{case}.step_position_ids"]
    batch = chatglm_batch([ids], config, [len(steps) + 1], config.pad_token_id)
    context = len(ids)
    assert torch.equal(batch.input_ids[:, :context], tensors[f"cases.{case}.input_ids"])
    assert torch.equal(batch.position_ids[..., :context], tensors[f"cases.{case}.position_ids"])
    assert torch.equal(batch.blocked[..., :context, :context], tensors[f"cases.{case}.attention_mask"])
    assert torch.equal(batch.position_ids[0, :, context : context + len(steps)].T, steps)
    assert not batch.blocked[0, 0, context:, : context + len(steps)].tril(context).any()  # decode sees everything


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_greedy_generation_equals_the_references_greedy(golden, case, dtype_name):
    _, tensors = golden
    model = golden_model(golden, DTYPES[dtype_name])
    ids = tensors[f"cases.{case}.input_ids"][0].tolist()
    reference = tensors[f"{dtype_name}.{case}.greedy_tokens"].tolist()
    strategy = GreedyStrategy(model.config.end_token_ids)
    ours = generate_ids(model, model.config, [ids], len(ids) + len(reference), strategy)[0]
    assert ours == reference
