"""Checkpoints: the native format and the reference's SAT format, and the errors a user can hit with them."""

import pytest
import torch

import glm_engine
from glm_engine.checkpoint import open_checkpoint, save_native
from glm_engine.errors import CheckpointError
from glm_engine.model.glm130b.config import GLMConfig
from glm_engine.model.glm130b.weights import random_state_dict


def write_sat(folder, state_dict, config=None, tag="1000", ranks=(0,)):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "latest").write_text(tag + "\n")
    (folder / tag).mkdir(exist_ok=True)
    for rank in ranks:
        torch.save({"module": state_dict, "iteration": 1000}, folder / tag / f"mp_rank_{rank:02d}_model_states.pt")
    if config is not None:
        config.to_json_file(folder / "config.json")
    return folder


@pytest.fixture
def state_dict(small_config):
    return random_state_dict(small_config, seed=5, dtype=torch.float16)


def logits_of(engine):
    ids = torch.tensor([[30, 31, 32, 33]])
    positions = torch.arange(4).unsqueeze(0)
    blocked = ~torch.ones(4, 4, dtype=torch.bool).tril()[None, None]
    return engine.forward(ids, positions, blocked)


def test_native_round_trip_gives_identical_logits(tmp_path, small_config, state_dict):
    save_native(tmp_path / "native", small_config, state_dict)
    assert sorted(p.name for p in (tmp_path / "native").iterdir()) == ["config.json", "model.safetensors"]
    checkpoint = open_checkpoint(tmp_path / "native")
    assert checkpoint.config == small_config and checkpoint.source_tp == 1 and checkpoint.bits is None
    loaded = checkpoint.rank_state_dict(0, 1, torch.float16)
    assert set(loaded) == set(state_dict)
    assert all(torch.equal(loaded[k], state_dict[k]) for k in state_dict)


def test_sat_and_native_checkpoints_of_the_same_weights_agree(tmp_path, small_config, state_dict):
    sat_dict = dict(state_dict)
    sat_dict["transformer.layers.0.attention.rotary_emb.inv_freq"] = torch.ones(8)  # ignored, as in the release
    write_sat(tmp_path / "sat", sat_dict, small_config)
    save_native(tmp_path / "native", small_config, state_dict)
    sat = glm_engine.load(str(tmp_path / "sat"), tokenizer=False, dtype="fp32")
    native = glm_engine.load(str(tmp_path / "native"), tokenizer=False, dtype="fp32")
    assert torch.equal(logits_of(sat), logits_of(native))


def test_sat_folder_without_config_needs_a_preset(tmp_path, small_config, state_dict):
    write_sat(tmp_path / "sat", state_dict)
    with pytest.raises(CheckpointError, match="--config"):
        open_checkpoint(tmp_path / "sat")
    checkpoint = open_checkpoint(tmp_path / "sat", config=small_config)
    assert checkpoint.config == small_config and len(checkpoint.infos[0]) == len(state_dict)


def test_latest_may_say_release(tmp_path, small_config, state_dict):
    write_sat(tmp_path / "sat", state_dict, small_config, tag="release")
    assert open_checkpoint(tmp_path / "sat").iteration == "release"


@pytest.mark.parametrize("tag", ["0", "abc", ""])
def test_bad_latest_file_is_reported(tmp_path, small_config, state_dict, tag):
    write_sat(tmp_path / "sat", state_dict, small_config)
    (tmp_path / "sat" / "latest").write_text(tag)
    with pytest.raises(CheckpointError, match="iteration number"):
        open_checkpoint(tmp_path / "sat")


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path, small_config, state_dict):
    broken = dict(state_dict)
    del broken["transformer.layers.1.mlp.dense_4h_to_h.bias"]
    broken["transformer.extra.weight"] = torch.zeros(3)
    broken["transformer.layers.0.attention.dense.weight"] = torch.zeros(5, 5, dtype=torch.float16)
    write_sat(tmp_path / "sat", broken, small_config)
    with pytest.raises(CheckpointError) as info:
        glm_engine.load(str(tmp_path / "sat"), tokenizer=False)
    message = str(info.value)
    assert "1 missing: transformer.layers.1.mlp.dense_4h_to_h.bias" in message
    assert "1 unexpected: transformer.extra.weight" in message
    assert "transformer.layers.0.attention.dense.weight is [5, 5], expected [64, 64]" in message
    assert "mp_rank_00_model_states.pt" in message


class NotATensor:
    """Any class that is not in torch's weights-only allow-list."""


def test_checkpoints_that_would_run_code_are_refused(tmp_path, small_config, state_dict):
    folder = write_sat(tmp_path / "sat", state_dict, small_config)
    torch.save({"module": state_dict, "payload": NotATensor()}, folder / "1000" / "mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointError, match=r"refers to .*NotATensor.*must not be able to run code"):
        open_checkpoint(folder)


def test_sat_training_checkpoints_with_numpy_rng_state_load(tmp_path, small_config, state_dict):
    """SAT's save_checkpoint stores np.random.get_state() next to 'module': data, not code."""
    import random

    import numpy as np

    folder = write_sat(tmp_path / "sat", state_dict, small_config)
    extra = {"np_rng_state": np.random.get_state(), "random_rng_state": random.getstate(), "iteration": 1000}
    torch.save({"module": state_dict, **extra}, folder / "1000" / "mp_rank_00_model_states.pt")
    assert open_checkpoint(folder).source_tp == 1


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_paths_that_are_not_checkpoints_say_what_a_checkpoint_is(tmp_path, kind):
    path = tmp_path / "x"
    if kind == "file":
        path.write_text("hi")
    elif kind == "empty":
        path.mkdir()
    with pytest.raises(CheckpointError, match=r"does not exist|is a file|is not a checkpoint"):
        open_checkpoint(path)


def test_config_json_next_to_latest_is_honoured(tmp_path, small_config, state_dict):
    other = GLMConfig.from_dict({**small_config.to_dict(), "layernorm_epsilon": 1e-6})
    write_sat(tmp_path / "sat", state_dict, other)
    assert open_checkpoint(tmp_path / "sat").config.layernorm_epsilon == 1e-6
