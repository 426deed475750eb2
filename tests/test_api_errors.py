"""The Python API's bad arguments, table-driven: each is a ``GlmEngineError`` (an ``InputError``) naming the argument,
never a TypeError, an IndexError or a tokenizer's own exception."""

from __future__ import annotations

import re

import pytest
import torch

import glm_engine
from glm_engine.errors import InputError


@pytest.fixture(scope="module")
def engine():
    return glm_engine.load("glm-tiny", dtype="fp32")


IDS = torch.tensor([[20100, 20200, 20300]])
NO_MASK = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
CASES = [
    ("generate", ([None],), {}, "prompts[0] must be a string, got NoneType"),
    ("generate", ([123],), {}, "prompts[0] must be a string, got int"),
    ("generate", (["ok [MASK]", b"x"],), {}, "prompts[1] must be a string, got bytes: decode bytes first"),
    ("generate", (b"x",), {}, "prompts must be a string or a list of strings, got bytes"),
    ("generate", ("a\udc80b",), {}, "prompts[0] is not valid Unicode text"),
    ("generate", ([],), {}, "no prompts given"),
    ("generate", ("a [MASK]",), {"seed": "x"}, "seed must be an integer, got 'x'"),
    ("generate", ("a [MASK]",), {"out_seq_length": 2.5}, "out_seq_length must be an integer, got 2.5"),
    ("generate", ("a [MASK]",), {"top_k": True}, "top_k must be an integer, got True"),
    ("forward", (torch.ones(1, 3),), {}, "input_ids must hold integers, got torch.float32"),
    ("forward", (torch.ones(1, 3, dtype=torch.bool),), {}, "input_ids must hold integers, got torch.bool"),
    ("forward", (torch.zeros(1, 0, dtype=torch.long),), {}, "input_ids is empty: (1, 0)"),
    ("forward", (torch.zeros(0, 3, dtype=torch.long),), {}, "input_ids is empty: (0, 3)"),
    ("forward", (torch.zeros(3, dtype=torch.long),), {}, "input_ids must have 2 dimensions"),
    ("forward", ([[1, 2], [3]],), {}, "input_ids must be integers of equal-length rows"),
    ("forward", ("text",), {}, "input_ids must be a tensor of integers, got str"),
    ("forward", (IDS, torch.zeros(1, 3), NO_MASK), {}, "position_ids must hold integers, got torch.float32"),
    ("forward", (IDS, torch.arange(3)[None], NO_MASK.float()), {}, "attention_mask must be bool (True = blocked)"),
]


@pytest.mark.parametrize(("method", "args", "kwargs", "message"), CASES)
def test_bad_arguments_are_input_errors_naming_the_argument(engine, method, args, kwargs, message):
    with pytest.raises(InputError, match=re.escape(message)):
        getattr(engine, method)(*args, **kwargs)


def test_python_lists_of_ids_are_taken_as_tensors(engine):
    assert torch.equal(engine.forward([[20100, 20200, 20300]]), engine.forward(IDS))


def test_chat_options_of_the_wrong_type_are_input_errors():
    chat = glm_engine.load("chatglm3-tiny", dtype="fp32")
    with pytest.raises(InputError, match="max_new_tokens must be an integer, got '3'"):
        chat.chat([{"role": "user", "content": "hi"}], max_new_tokens="3")


def test_non_finite_weights_are_refused_with_the_tensors_name(monkeypatch):
    from glm_engine.errors import CheckpointError
    from glm_engine.model.glm130b.family import GLM130BFamily

    original = GLM130BFamily.random_state_dict

    def damaged(self, config, seed, dtype=torch.float32):
        state = original(self, config, seed, dtype)
        key = next(k for k in state if k.endswith("dense.weight"))
        state[key] = state[key].clone()
        state[key][0, 0] = float("nan")
        return state

    monkeypatch.setattr(GLM130BFamily, "random_state_dict", damaged)
    with pytest.raises(CheckpointError, match=r"dense.weight holds 1 NaN or infinite values"):
        glm_engine.load("glm-tiny", dtype="fp32")


def test_non_finite_logits_are_an_error_not_text(engine, monkeypatch):
    from glm_engine.errors import NumericalError

    forward = engine.runner.forward
    monkeypatch.setattr(engine.runner, "forward", lambda *a, **k: forward(*a, **k) * float("nan"))
    with pytest.raises(NumericalError, match="NaN or infinite logits at step 0"):
        engine.generate("The sky is [MASK].", out_seq_length=24)


def test_the_serving_core_ends_a_non_finite_sequence_and_goes_on(engine, monkeypatch):
    from glm_engine.serving.core import NON_FINITE, EngineCore
    from glm_engine.serving.sampling import SamplingParams

    core = EngineCore(engine.runner, 4 << 20)
    tokens = engine.runner.family.blank_tokens(engine.runner.config)
    prompt = [20100, 20200, tokens.gmask, tokens.sop]
    forward = core.model.forward
    monkeypatch.setattr(core.model, "forward", lambda *a, **k: forward(*a, **k) * float("nan"))
    core.add_request("bad", prompt, SamplingParams(max_tokens=4, temperature=0.0))
    (out,) = core.step()
    assert out.finished and out.finish_reason == NON_FINITE and out.choice is None
    assert core.stats().blocks_used == 0 and not core.has_work
    monkeypatch.setattr(core.model, "forward", forward)
    core.add_request("good", prompt, SamplingParams(max_tokens=2, temperature=0.0))
    while core.has_work:
        core.step()


def test_forward_works_without_a_tokenizer_and_text_calls_say_how_to_get_one(tmp_path):
    """``tokenizer=False``: a folder without tokenizer files loads for ``forward``; text calls are InputErrors."""
    from glm4_reference import make_native_folder

    folder = make_native_folder(tmp_path / "glm4", "glm4")  # transformers' save_pretrained: weights, no tokenizer
    with pytest.raises(glm_engine.GlmEngineError, match="tokenizer"):
        glm_engine.load(folder, dtype="fp32")
    engine = glm_engine.load(folder, dtype="fp32", tokenizer=False)
    logits = engine.forward(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, engine.config.vocab_size) and torch.isfinite(logits).all()
    for call in (lambda: engine.generate("hello"), lambda: engine.chat([{"role": "user", "content": "hi"}])):
        with pytest.raises(InputError, match=r"loaded without a tokenizer \(tokenizer=False\)"):
            call()
    with pytest.raises(InputError, match="tokenizer must be a path"):
        glm_engine.load(folder, tokenizer=3)
