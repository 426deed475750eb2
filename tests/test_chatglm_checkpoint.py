"""ChatGLM-6B Hugging Face checkpoints: every layout loads to the same model, bad keys are named with their file,
and the INT4/INT8 releases are recognised from their shapes and dequantized as the reference's kernels do."""

import json

import pytest
import torch
from safetensors.torch import save_file

import glm_engine
from glm_engine.checkpoint import open_checkpoint
from glm_engine.engine.source import open_source
from glm_engine.errors import CheckpointError, ConfigError
from glm_engine.model import hf_reader as reader_module
from glm_engine.model.chatglm.config import CHATGLM_PRESETS, ChatGLMConfig
from glm_engine.model.chatglm.family import ChatGLMFamily
from glm_engine.model.chatglm.weights import random_state_dict, weight_layout
from glm_engine.model.weights import ReadRequest
from glm_engine.ops.interface import PackedLinear
from glm_engine.quant.reference import quantize

CONFIG = ChatGLMConfig(
    num_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    inner_hidden_size=48,
    vocab_size=128,
    max_sequence_length=64,
    bos_token_id=124,
    eos_token_id=125,
    mask_token_id=120,
    gmask_token_id=121,
)
INV_FREQ = "transformer.layers.0.attention.rotary_emb.inv_freq"


def write_hf(folder, state_dict, layout, config=CONFIG):
    """A Hugging Face folder as THUDM publishes it: config.json and the weights in ``layout``."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**config.to_hf_dict(), "architectures": ["ChatGLMModel"]}))
    keys = list(state_dict)
    halves = {1: keys[: len(keys) // 2], 2: keys[len(keys) // 2 :]}
    if layout == "bin":
        torch.save(state_dict, folder / "pytorch_model.bin")
    elif layout == "safetensors":
        save_file(state_dict, str(folder / "model.safetensors"))
    else:
        suffix = "bin" if layout == "bin-index" else "safetensors"
        stem = "pytorch_model" if suffix == "bin" else "model"
        weight_map = {}
        for part, names in halves.items():
            name = f"{stem}-0000{part}-of-00002.{suffix}"
            shard = {k: state_dict[k].contiguous() for k in names}
            torch.save(shard, folder / name) if suffix == "bin" else save_file(shard, str(folder / name))
            weight_map.update(dict.fromkeys(names, name))
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (folder / f"{stem}.{suffix}.index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="module")
def state_dict():
    weights = random_state_dict(CONFIG, seed=3, dtype=torch.float16)
    weights[INV_FREQ] = torch.ones(2, dtype=torch.float16)  # carried by the releases, recomputed here
    return weights


def converted(state_dict, config, dtype):
    """The reader over an in-memory release state dict, and its tensors as the model would get them with no
    quantized kernels (quantized weights dequantized as the reference's kernels do)."""
    reader = ChatGLMFamily().state_dict_reader(state_dict, config, "a state dict")
    return reader, reader.read(ReadRequest(dtype=dtype, keep_quantized=False))


def quantizable_keys(config):
    return weight_layout(config).quantizable_keys


H_TO_4H = "transformer.layers.0.mlp.dense_h_to_4h.weight"


def logits_of(engine):
    ids = torch.tensor([[10, 11, 12, 121, 124]])
    positions = torch.tensor([[[0, 1, 2, 3, 3], [0, 0, 0, 0, 1]]])
    blocked = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    blocked[..., :4, 4] = True
    return engine.forward(ids, positions, blocked)


@pytest.mark.parametrize("layout", ["bin-index", "bin", "safetensors", "safetensors-index"])
def test_every_weight_layout_loads_the_same_model(tmp_path, state_dict, layout):
    folder = write_hf(tmp_path / layout, state_dict, layout)
    engine = glm_engine.load_chatglm(folder, dtype="fp32", tokenizer=False)
    _, in_memory = converted(state_dict, CONFIG, torch.float32)
    assert all(torch.equal(engine.runner.weights.state_dict()[k], v) for k, v in in_memory.items())
    assert engine.runner.weights.unused_keys == []
    assert logits_of(engine).shape == (1, 5, CONFIG.vocab_size)


def test_sharded_files_are_read_one_at_a_time(tmp_path, state_dict, monkeypatch):
    reader = open_source(write_hf(tmp_path / "ckpt", state_dict, "bin-index")).reader
    checkpoint = reader.checkpoint
    names = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    assert [p.name for p in checkpoint.files] == names
    assert {info.file for info in checkpoint.entries.values()} == {p.name for p in checkpoint.files}
    events = []  # each file's tensors are converted before the next file is opened
    opened, converts = reader_module.open_weight_file, reader_module.StateDictReader.read

    def opening(path):
        events.append(("open", path.name))
        return opened(path)

    def converting(self, *args, **kwargs):
        events.append(("convert", len(self.state_dict)))
        return converts(self, *args, **kwargs)

    monkeypatch.setattr(reader_module, "open_weight_file", opening)
    monkeypatch.setattr(reader_module.StateDictReader, "read", converting)
    reader.read(ReadRequest(dtype=torch.float32))
    assert [kind for kind, _ in events] == ["open", "convert", "open", "convert"]
    assert [name for kind, name in events if kind == "open"] == [p.name for p in checkpoint.files]


def test_bad_keys_are_named_with_the_file_they_came_from(tmp_path, state_dict):
    broken = dict(state_dict)
    del broken["transformer.layers.1.mlp.dense_4h_to_h.bias"]
    broken["transformer.layers.2.input_layernorm.weight"] = torch.ones(32, dtype=torch.float16)  # a 3rd layer
    broken["transformer.layers.0.mlp.dense_h_to_4h.weight"] = torch.zeros(96, 32, dtype=torch.float16)  # GeGLU-sized
    folder = write_hf(tmp_path / "ckpt", broken, "bin-index")
    with pytest.raises(CheckpointError) as caught:
        glm_engine.load_chatglm(folder, tokenizer=False)
    message = str(caught.value)
    assert "1 missing: transformer.layers.1.mlp.dense_4h_to_h.bias" in message
    assert "transformer.layers.2.input_layernorm.weight (in pytorch_model-0000" in message
    assert "transformer.layers.0.mlp.dense_h_to_4h.weight in pytorch_model-00001-of-00002.bin is (96, 32)" in message


def test_index_problems_are_reported(tmp_path, state_dict):
    folder = write_hf(tmp_path / "ckpt", state_dict, "bin-index")
    (folder / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match=r"lists files that are not there: pytorch_model-00002-of-00002\.bin"):
        open_source(folder)
    folder = write_hf(tmp_path / "lying", state_dict, "bin-index")
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "pytorch_model-00001-of-00002.bin"  # it is in the second file
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"puts lm_head\.weight in pytorch_model-00001-of-00002\.bin"):
        open_source(folder)


class NotATensor:
    pass


def test_a_bin_file_that_would_run_code_is_refused(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG.to_hf_dict()))
    torch.save({"lm_head.weight": NotATensor()}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="must not be able to run code"):
        open_source(folder)


def test_one_load_takes_a_chatglm_folder_and_the_glm130b_reader_names_it(tmp_path, state_dict):
    folder = write_hf(tmp_path / "ckpt", state_dict, "safetensors")
    with pytest.raises(CheckpointError, match=r"Hugging Face 'chatglm' checkpoint.*glm_engine\.load\(\)"):
        open_checkpoint(folder)  # GLM-130B's SAT/native reader
    engine = glm_engine.load(str(folder), dtype="fp32", tokenizer=False)
    assert engine.family.name == "chatglm" and engine.family.chat_model
    assert logits_of(engine).shape == (1, 5, CONFIG.vocab_size)


def signed_nibbles(stored: torch.Tensor) -> torch.Tensor:
    """INT4 values written out independently: high nibble = even column, both sign-extended."""
    wide = stored.to(torch.int16)
    high = wide >> 4
    low = ((wide & 0x0F) ^ 0x08) - 0x08
    return torch.stack((high, low), dim=-1).flatten(-2)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_releases_are_detected_from_shapes_and_dequantized_like_the_kernels(tmp_path, state_dict, bits):
    quantized = dict(state_dict)
    for key in quantizable_keys(CONFIG):
        quantized[key], quantized[key + "_scale"] = quantize(state_dict[key], bits)
    folder = write_hf(tmp_path / "ckpt", quantized, "bin", CONFIG.with_overrides(quantization_bit=bits))
    key = quantizable_keys(CONFIG)[2]  # layer 0 dense_h_to_4h: [48, 32], stored [48, 32 * bits / 8]
    assert quantized[key].shape == (48, 32 * bits // 8) and quantized[key].dtype == torch.int8
    values = signed_nibbles(quantized[key]) if bits == 4 else quantized[key]
    scale = quantized[key + "_scale"]

    kept = glm_engine.load_chatglm(folder, dtype="fp32", tokenizer=False)
    assert any(f"INT{bits} rowwise, as stored" in note for note in kept.notes)
    packed = kept.runner.weights.layers[0].dense_h_to_4h_weight  # runs quantized: the release's bytes, unchanged
    assert isinstance(packed, PackedLinear) and packed.format.value == f"int{bits}-rowwise"
    columns = packed(torch.eye(32)).T  # one-hot inputs read the weight back: half(q) * scale
    assert torch.allclose(columns, (values.half() * scale[:, None]).float(), rtol=1e-2, atol=1e-4)

    with_bits = CONFIG.with_overrides(quantization_bit=bits)  # dequantized at load, as the reference's kernels do
    reader, fp32 = converted(quantized, with_bits, torch.float32)
    assert reader.stored_quant.bits == bits
    cpu_kernel = values.float() * scale.float()[:, None]  # extract_int*_weight_to_float: exact in fp32
    assert torch.equal(fp32[H_TO_4H], cpu_kernel)
    _, fp16 = converted(quantized, with_bits, torch.float16)
    assert torch.equal(fp16[H_TO_4H], cpu_kernel.half())  # half(q) * scale
    error = (cpu_kernel - state_dict[key].float()).abs().max()
    assert error <= scale.float().max() / 2 + 1e-3  # within half a quantization step of the original


def test_quantized_checkpoints_that_contradict_themselves_are_refused(tmp_path, state_dict):
    keys = quantizable_keys(CONFIG)
    mixed = dict(state_dict)
    for key, bits in zip(keys, [8, 4] * len(keys)):
        mixed[key], mixed[key + "_scale"] = quantize(state_dict[key], bits)
    with pytest.raises(CheckpointError, match="mixes INT4 and INT8"):
        converted(mixed, CONFIG, torch.float32)
    int4 = dict(state_dict)
    for key in keys:
        int4[key], int4[key + "_scale"] = quantize(state_dict[key], 4)
    with pytest.raises(CheckpointError, match="says quantization_bit 8 but the weights are INT4"):
        converted(int4, CONFIG.with_overrides(quantization_bit=8), torch.float32)
    no_scale = dict(state_dict)
    no_scale[keys[0]] = quantize(state_dict[keys[0]], 8)[0]
    with pytest.raises(CheckpointError, match=r"torch\.int8 without a weight_scale"):
        converted(no_scale, CONFIG, torch.float32)


# THUDM/chatglm-6b config.json (final revision), as published.
CHATGLM_6B_CONFIG_JSON = {
    "_name_or_path": "THUDM/chatglm-6b",
    "architectures": ["ChatGLMModel"],
    "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig"},
    "bos_token_id": 130004,
    "eos_token_id": 130005,
    "mask_token_id": 130000,
    "gmask_token_id": 130001,
    "pad_token_id": 3,
    "hidden_size": 4096,
    "inner_hidden_size": 16384,
    "layernorm_epsilon": 1e-05,
    "max_sequence_length": 2048,
    "model_type": "chatglm",
    "num_attention_heads": 32,
    "num_layers": 28,
    "position_encoding_2d": True,
    "torch_dtype": "float16",
    "transformers_version": "4.23.1",
    "use_cache": True,
    "vocab_size": 130528,
}


def test_the_published_config_reads_as_the_preset():
    config = ChatGLMConfig.from_hf_dict(CHATGLM_6B_CONFIG_JSON)
    assert config == CHATGLM_PRESETS["chatglm-6b"]
    assert config.rotary_dim == 64 and config.num_image_tokens == 0
    assert config.num_parameters() == 6_707_929_088  # 2 x 130528 x 4096 + 28 layers of 201,379,840 + final LN
    first_release = {**CHATGLM_6B_CONFIG_JSON, "vocab_size": 150528, "bos_token_id": 150004, "eos_token_id": 150005}
    first_release.update(mask_token_id=150000, gmask_token_id=150001)
    assert ChatGLMConfig.from_hf_dict(first_release).num_image_tokens == 20000  # icetk's image ids in front


def test_deepnorm_uses_the_blocks_default_depth_whatever_the_layer_count():
    assert CONFIG.num_layers == 2 and CONFIG.deepnorm_alpha == 56**0.5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pre_seq_len": 128}, "P-tuning"),
        ({"position_encoding_2d": False}, "2-D rotary"),
        ({"quantization_bit": 3}, "quantization_bit"),
        ({"model_type": "chatglm2"}, "not ChatGLM-6B"),
        ({"hidden_size": 4104, "num_attention_heads": 4}, "multiple of 4"),
        ({"gmask_token_id": 130528}, "below vocab_size"),
        ({"rope_ratio": 2}, "unknown ChatGLM config keys"),
    ],
)
def test_configs_the_graph_cannot_run_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        ChatGLMConfig.from_hf_dict({**CHATGLM_6B_CONFIG_JSON, **change})


def test_a_release_with_a_quantized_embedding_and_lm_head_runs_them_dequantized(tmp_path, state_dict):
    """THUDM's chatglm-6b-int4-qe also quantizes the embedding and lm_head; only the four linears run quantized, the
    others are dequantized as the reference's kernels dequantize them (its lookup and logits take a float table)."""
    from glm_engine.model.hf_release import dequantize_like_reference

    release = dict(state_dict)
    for key in [*quantizable_keys(CONFIG), "transformer.word_embeddings.weight", "lm_head.weight"]:
        release[key], release[key + "_scale"] = quantize(state_dict[key], 4)
    folder = write_hf(tmp_path / "qe", release, "safetensors-index", CONFIG.with_overrides(quantization_bit=4))
    engine = glm_engine.load(folder, dtype="fp32", tokenizer=False)
    weights = engine.runner.weights
    assert isinstance(weights.layers[0].dense_h_to_4h_weight, PackedLinear)
    for key, tensor in (
        ("lm_head.weight", weights.output),
        ("transformer.word_embeddings.weight", weights.word_embeddings),
    ):
        stored, scale = release[key], release[key + "_scale"]
        assert isinstance(tensor, torch.Tensor)
        assert torch.equal(tensor, dequantize_like_reference(stored, scale, 4, torch.float32))
    assert logits_of(engine).isfinite().all()


def test_loading_reports_progress_per_tensor(tmp_path, state_dict):
    folder = write_hf(tmp_path / "ckpt", state_dict, "bin-index")
    calls = []
    glm_engine.load(folder, dtype="fp32", tokenizer=False, progress=lambda d, t: calls.append((d, t)))
    total = len(weight_layout(CONFIG).shapes)
    assert calls == [(n, total) for n in range(1, total + 1)]


def test_a_config_of_another_family_is_refused_for_a_folder(tmp_path, state_dict):
    folder = write_hf(tmp_path / "ckpt", state_dict, "safetensors")
    with pytest.raises(ConfigError, match=r"names a GLM-130B config, but .* is a ChatGLM-6B checkpoint"):
        glm_engine.load(folder, config="glm-tiny")
