"""The one Python API for every family: ``load`` any source, ``forward`` with the family's own layout by default,
``generate``, ``chat`` with OpenAI-style messages, and 0.1's ChatGLM aliases kept (with a deprecation warning)."""

from __future__ import annotations

import warnings

import pytest
import torch

import glm_engine
from glm_engine.errors import InputError
from glm_engine.model.chatglm.chat import build_chat_prompt, chatglm_batch, rounds_of
from glm_engine.model.chatglm.config import chatglm_preset
from glm_engine.model.glm130b.config import preset
from glm_engine.tokenizer import BUILTIN_TOKENIZER_PATH

CHATGLM = chatglm_preset("chatglm-tiny")


@pytest.fixture(scope="module")
def chat_engine() -> glm_engine.Engine:
    return glm_engine.load("chatglm-tiny", backend="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def glm_engine_tiny() -> glm_engine.Engine:
    return glm_engine.load("glm-tiny", backend="cpu", dtype="fp32")


def test_load_names_the_family_of_every_source(chat_engine, glm_engine_tiny):
    assert chat_engine.family.name == "chatglm" and chat_engine.family.chat_model
    assert glm_engine_tiny.family.name == "glm" and not glm_engine_tiny.family.chat_model
    assert glm_engine.load().family.title == "GLM-130B"  # the built-in demo model


def test_forward_without_positions_uses_the_chatglm_generation_layout(chat_engine):
    """The default layout is the one generation feeds its prefill: chatglm_batch's 2-D positions and mask."""
    ids = [*range(20, 27), CHATGLM.gmask_token_id, CHATGLM.bos_token_id]
    batch = chatglm_batch([ids], CHATGLM, [1], CHATGLM.pad_token_id)
    n = len(ids)
    explicit = chat_engine.forward(torch.tensor([ids]), batch.position_ids[..., :n], batch.blocked[..., :n, :n])
    assert torch.equal(chat_engine.forward(torch.tensor([ids])), explicit)


def test_forward_without_positions_uses_glm_blank_layout(glm_engine_tiny):
    layout = glm_engine_tiny.config.vocab_layout
    ids = torch.tensor([[20005, 20006, layout.mask, 20007, layout.eos, layout.sop, 20010]])
    positions = torch.tensor([[0, 1, 2, 3, 4, 2, 2]])  # sop and after take the [MASK]'s position
    blocked = torch.ones(7, 7, dtype=torch.bool).triu(1)
    blocked[:, :5] = False  # the context before sop is bidirectional
    explicit = glm_engine_tiny.forward(ids, positions, blocked[None, None])
    assert torch.equal(glm_engine_tiny.forward(ids), explicit)


def test_forward_refuses_half_a_layout_and_wrong_shapes(chat_engine):
    ids = torch.tensor([[20, 21, CHATGLM.gmask_token_id, CHATGLM.bos_token_id]])
    positions, blocked = chat_engine.family.prompt_inputs(chat_engine.config, ids)
    with pytest.raises(InputError, match="both position_ids and attention_mask, or neither"):
        chat_engine.forward(ids, positions)
    with pytest.raises(InputError, match=r"\[batch, 2, seq\]"):
        chat_engine.forward(ids, positions[:, 0], blocked)


def test_chat_takes_openai_messages_and_matches_the_reference_prompt(chat_engine):
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "a reply"},
        {"role": "user", "content": "second"},
    ]
    assert rounds_of(messages) == ("second", [("first", "a reply")])
    reply = chat_engine.chat(messages, do_sample=False, max_new_tokens=6)
    assert reply["role"] == "assistant" and isinstance(reply["content"], str)
    # the same text continued through generate() on the prompt the reference's chat() builds
    prompt = build_chat_prompt("second", [("first", "a reply")])
    continued = chat_engine.generate(prompt, do_sample=False, max_new_tokens=6)[0].blanks[0][0]
    assert reply["content"] == continued.strip()


def test_chat_refuses_what_chatglm_cannot_take_and_glm_130b_is_not_a_chat_model(chat_engine, glm_engine_tiny):
    with pytest.raises(InputError, match="no system prompt"):
        chat_engine.chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    with pytest.raises(InputError, match="the last message must be the user's"):
        chat_engine.chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    with pytest.raises(InputError, match="GLM-130B is not a chat model"):
        glm_engine_tiny.chat([{"role": "user", "content": "hi"}])


def test_generate_returns_completions_for_every_family(chat_engine, glm_engine_tiny):
    (chat,) = chat_engine.generate("Hello", do_sample=False, max_new_tokens=4)
    assert chat.prompt == "Hello" and chat.answers[0] == "Hello" + chat.blanks[0][0]
    (blank,) = glm_engine_tiny.generate("Hello [MASK] world", top_k=1, out_seq_length=16)
    assert blank.answers and blank.blanks[0]
    with pytest.raises(InputError, match="unknown chat options"):
        chat_engine.generate("Hello", out_seq_length=8)  # a GLM-130B option is not a chat option


def test_the_0_1_chatglm_api_still_works_and_warns(chat_engine):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = glm_engine.load_chatglm("chatglm-tiny", "cpu", "fp32", BUILTIN_TOKENIZER_PATH)
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    reply, history = old.chat("hi", do_sample=False, max_new_tokens=4)
    assert history == [("hi", reply)]
    assert reply == chat_engine.chat([{"role": "user", "content": "hi"}], do_sample=False, max_new_tokens=4)["content"]
    assert (
        old.generate("Hello", do_sample=False, max_new_tokens=4)
        == chat_engine.generate("Hello", do_sample=False, max_new_tokens=4)[0].blanks[0][0]
    )
    with pytest.raises(InputError, match="not ChatGLM"):
        glm_engine.load_chatglm("glm-tiny")
    assert preset("glm-tiny").num_layers == 4  # the 0.1 config API is still exported
