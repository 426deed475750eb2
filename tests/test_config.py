import json

import pytest

from glm_engine.errors import ConfigError
from glm_engine.model.glm130b.config import GLMConfig, preset


def test_glm_130b_preset_matches_the_release():
    config = preset("glm-130b")
    assert (config.num_layers, config.hidden_size, config.num_attention_heads) == (70, 12288, 96)
    assert (config.inner_hidden_size, config.vocab_size, config.max_sequence_length) == (32768, 150528, 2048)
    assert config.head_dim == 128
    assert config.deepnorm_alpha == pytest.approx(11.832159566199232, abs=0)
    assert config.num_parameters() == 128_697_794_560  # docs/glm-semantics.md#glm-130b-hyper-parameters
    assert config.valid_tp_degrees() == [1, 2, 4, 8, 16, 32]


def test_glm_tiny_shares_the_vocabulary_layout_of_glm_130b():
    tiny, big = preset("glm-tiny"), preset("glm-130b")
    assert tiny.vocab_layout == big.vocab_layout
    assert tiny.vocab_size == big.vocab_size
    assert tiny.num_layers < 10


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_attention_heads": 5}, "must divide hidden_size"),
        ({"num_layers": 0}, "num_layers must be a positive integer"),
        ({"vocab_size": 1000}, "must exceed every special token id"),
        ({"rotary_recipe": "fp8"}, "rotary_recipe must be one of"),
        ({"layernorm_epsilon": 0.0}, "layernorm_epsilon"),
        ({"hidden_size": 60, "num_attention_heads": 4}, "must be even"),
    ],
)
def test_invalid_configs_fail_with_a_clear_message(changes, message):
    with pytest.raises(ConfigError, match=message):
        preset("glm-tiny").with_overrides(**changes)


def test_config_json_round_trip_uses_the_reference_argument_names(tmp_path):
    path = tmp_path / "config.json"
    preset("glm-130b").to_json_file(path)
    data = json.loads(path.read_text())
    for name in (
        "num_layers",
        "hidden_size",
        "inner_hidden_size",
        "num_attention_heads",
        "vocab_size",
        "max_sequence_length",
        "layernorm_epsilon",
    ):
        assert name in data
    assert GLMConfig.from_json_file(path) == preset("glm-130b")


def test_config_json_with_unknown_or_missing_keys_is_refused(tmp_path):
    data = preset("glm-tiny").to_dict()
    (tmp_path / "typo.json").write_text(json.dumps({**data, "num_layer": 3}))
    with pytest.raises(ConfigError, match="unknown config keys"):
        GLMConfig.from_json_file(tmp_path / "typo.json")
    del data["hidden_size"]
    (tmp_path / "missing.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="missing required config keys"):
        GLMConfig.from_json_file(tmp_path / "missing.json")


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="glm-130b"):
        preset("glm-999b")
