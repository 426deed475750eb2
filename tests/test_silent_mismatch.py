"""Pairs that would load and generate garbage are refused with the reason: a tokenizer from another model (piece
count, end-of-text id) and a ``num_attention_heads`` that keeps every weight shape (issue 18, item 6)."""

from __future__ import annotations

import json

import pytest
import torch
from glm4_reference import make_native_folder
from test_chatglm_checkpoint import CONFIG as CHATGLM_CONFIG
from test_chatglm_checkpoint import INV_FREQ as CHATGLM_INV_FREQ
from test_chatglm_checkpoint import write_hf

import glm_engine
from glm_engine.checkpoint.native import save_native
from glm_engine.errors import ConfigError, TokenizerError
from glm_engine.model.chatglm import weights as chatglm_weights
from glm_engine.model.glm130b import weights as glm_weights
from glm_engine.model.head_fingerprint import check_head_count
from glm_engine.tokenizer import BUILTIN_TOKENIZER_PATH
from glm_engine.tokenizer.chat_loading import TINY_GLM4_HF_TOKENIZER

DEMO = "glm_engine/assets/demo_model"


def test_a_glm_tokenizer_with_another_piece_count_is_refused():
    with pytest.raises(TokenizerError, match=r"has 4000 text pieces .* layout has 5000 \(ids 0\.\.4999\)"):
        glm_engine.load(DEMO, tokenizer=BUILTIN_TOKENIZER_PATH)
    glm_engine.load("glm-tiny", tokenizer=BUILTIN_TOKENIZER_PATH)  # random weights may take a smaller tokenizer


def test_a_causal_tokenizer_with_another_end_of_text_id_is_refused(tmp_path):
    folder = make_native_folder(tmp_path / "glm4", "glm4", vocab_size=4096, eos_token_id=[7])
    with pytest.raises(TokenizerError, match=r"ends text with id \d+ but the config's eos_token_id is \[7\]"):
        glm_engine.load(folder, tokenizer=TINY_GLM4_HF_TOKENIZER)


def test_a_causal_tokenizer_with_more_ids_than_rows_is_refused(tmp_path):
    folder = make_native_folder(tmp_path / "glm4", "glm4", vocab_size=64, eos_token_id=[1])
    with pytest.raises(TokenizerError, match=r"produces \d+ ids but the model has 64 rows"):
        glm_engine.load(folder, tokenizer=TINY_GLM4_HF_TOKENIZER)


def test_a_chatglm_tokenizer_with_more_ids_than_rows_is_refused(tmp_path):
    state = chatglm_weights.random_state_dict(CHATGLM_CONFIG, seed=1, dtype=torch.float16)
    folder = write_hf(tmp_path / "chatglm", state, "safetensors")
    with pytest.raises(TokenizerError, match=r"produces 4000 ids but the model has 128 rows"):
        glm_engine.load(folder, tokenizer=BUILTIN_TOKENIZER_PATH)


def test_glm130b_heads_that_contradict_the_rotary_buffers_are_refused(tmp_path, small_config):
    state = glm_weights.random_state_dict(small_config, seed=2, dtype=torch.float16)
    state["transformer.layers.0.attention.rotary_emb.inv_freq"] = torch.ones(small_config.head_dim // 2)
    save_native(tmp_path / "n", small_config, state)
    config = json.loads((tmp_path / "n" / "config.json").read_text())
    (tmp_path / "n" / "config.json").write_text(json.dumps({**config, "num_attention_heads": 8}))
    with pytest.raises(ConfigError, match=r"num_attention_heads 8 makes heads of 8 dims.* i\.e\. 4 heads"):
        glm_engine.load(tmp_path / "n", tokenizer=False)


def test_chatglm_heads_that_contradict_the_rotary_buffers_are_refused(tmp_path):
    state = chatglm_weights.random_state_dict(CHATGLM_CONFIG, seed=1, dtype=torch.float16)
    state[CHATGLM_INV_FREQ] = torch.ones(2, dtype=torch.float16)  # heads of 8 dims: 4 heads over hidden 32
    wrong = CHATGLM_CONFIG.__class__(**{**CHATGLM_CONFIG.__dict__, "num_attention_heads": 2})
    folder = write_hf(tmp_path / "chatglm", state, "safetensors", config=wrong)
    with pytest.raises(ConfigError, match=r"num_attention_heads 2 makes heads of 16 dims.* i\.e\. 4 heads"):
        glm_engine.load(folder, tokenizer=False)


@pytest.mark.parametrize(
    ("fingerprint", "hidden", "layers", "name"),
    [(glm_weights.HEAD_FINGERPRINT, 12288, 70, "GLM-130B"), (chatglm_weights.HEAD_FINGERPRINT, 4096, 28, "ChatGLM-6B")],
)
def test_the_released_shapes_fix_the_head_count(fingerprint, hidden, layers, name):
    check_head_count(fingerprint, {}, hidden, layers, fingerprint.releases[(hidden, layers)][1], "ok")
    with pytest.raises(ConfigError, match=f"is {name}, which has"):
        check_head_count(fingerprint, {}, hidden, layers, 64, "folder")


@pytest.mark.parametrize("sharded", [False, True])
def test_native_heads_that_contradict_the_converted_head_count_are_refused(tmp_path, small_config, sharded):
    """No rotary buffer and no released shape to compare with: the head count written with the weights decides."""
    state = glm_weights.random_state_dict(small_config, seed=2, dtype=torch.float16)
    save_native(tmp_path / "n", small_config, state, max_shard_bytes=1 << 14 if sharded else 1 << 40)
    assert (tmp_path / "n" / "model.safetensors.index.json").is_file() == sharded
    config = json.loads((tmp_path / "n" / "config.json").read_text())
    heads = small_config.num_attention_heads
    (tmp_path / "n" / "config.json").write_text(json.dumps({**config, "num_attention_heads": heads * 2}))
    with pytest.raises(ConfigError, match=rf"says num_attention_heads {heads * 2}.* converted for {heads} heads"):
        glm_engine.load(tmp_path / "n", tokenizer=False)
    (tmp_path / "n" / "config.json").write_text(json.dumps(config))
    assert glm_engine.load(tmp_path / "n", tokenizer=False) is not None
