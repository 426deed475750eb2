"""Lean loading (docs/checkpoints.md#memory): a tied output matrix is held once on every load path, safetensors are
read straight into the runtime dtype, and loading peaks near the size of the weights it keeps."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file
from test_chatglm_checkpoint import CONFIG

import glm_engine
from glm_engine.bench.footprint import measure_footprint
from glm_engine.checkpoint import stream
from glm_engine.checkpoint.native import LazySafetensors
from glm_engine.errors import CheckpointError
from glm_engine.model.chatglm.config import ChatGLMConfig
from glm_engine.model.chatglm.weights import EMBEDDING_KEY, LM_HEAD_KEY, random_state_dict

SMALL = CONFIG  # the checkpoint tests' tiny ChatGLM-6B


def write_folder(folder, config, state_dict, layout="safetensors-index"):
    """A ChatGLM-6B Hugging Face folder: the embedding (and lm_head) in one file, the rest in another."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config.to_hf_dict()))
    first = [k for k in state_dict if k in (EMBEDDING_KEY, LM_HEAD_KEY)]
    parts = {1: first, 2: [k for k in state_dict if k not in first]}
    suffix, stem = ("bin", "pytorch_model") if layout == "bin-index" else ("safetensors", "model")
    weight_map = {}
    for number, names in parts.items():
        name = f"{stem}-0000{number}-of-00002.{suffix}"
        shard = {k: state_dict[k].contiguous() for k in names}
        torch.save(shard, folder / name) if suffix == "bin" else save_file(shard, str(folder / name))
        weight_map.update(dict.fromkeys(names, name))
    (folder / f"{stem}.{suffix}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def tied_state_dict(config, dtype=torch.float16, seed=5):
    weights = random_state_dict(config, seed, dtype)
    weights[LM_HEAD_KEY] = weights[EMBEDDING_KEY].clone()  # equal values, stored twice as the release does
    return weights


def table_bytes(config, dtype):
    return config.vocab_size * config.hidden_size * dtype.itemsize


@pytest.mark.parametrize("layout", ["safetensors-index", "bin-index"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_an_lm_head_equal_to_the_embedding_is_held_once(tmp_path, layout, dtype):
    tied = write_folder(tmp_path / "tied", SMALL, tied_state_dict(SMALL), layout)
    separate_weights = random_state_dict(SMALL, 5, torch.float16)
    separate = write_folder(tmp_path / "separate", SMALL, separate_weights, layout)
    one = glm_engine.load(tied, backend="cpu", dtype=dtype, tokenizer=False).runner.weights
    two = glm_engine.load(separate, backend="cpu", dtype=dtype, tokenizer=False).runner.weights
    assert one.output is None and one.logits_weight.data_ptr() == one.word_embeddings.data_ptr()
    assert two.output is not None and two.output.data_ptr() != two.word_embeddings.data_ptr()
    run_dtype = one.word_embeddings.dtype
    assert two.held_bytes() - one.held_bytes() == table_bytes(SMALL, run_dtype)
    # the tied model still computes with the stored lm_head's values, and hands it back under its name
    assert torch.equal(one.state_dict()[LM_HEAD_KEY], tied_state_dict(SMALL)[LM_HEAD_KEY].to(run_dtype))


def test_a_tied_lm_head_in_safetensors_is_compared_in_the_file_never_read(tmp_path, monkeypatch):
    read = []
    reading = LazySafetensors.read_as

    def recording(self, key, dtype):
        read.append(key)
        return reading(self, key, dtype)

    monkeypatch.setattr(LazySafetensors, "read_as", recording)
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1024)  # the comparison runs over several chunks
    tied = write_folder(tmp_path / "tied", SMALL, tied_state_dict(SMALL))
    held = glm_engine.load(tied, backend="cpu", dtype="bf16", tokenizer=False).runner.weights
    assert held.output is None and EMBEDDING_KEY in read and LM_HEAD_KEY not in read
    assert sorted(read) == sorted(set(read))  # every other tensor read once (membership tests read nothing)
    read.clear()
    differs = tied_state_dict(SMALL)
    differs[LM_HEAD_KEY][-1, -1] += 1  # one value in the last chunk
    folder = write_folder(tmp_path / "differs", SMALL, differs)
    held = glm_engine.load(folder, backend="cpu", dtype="bf16", tokenizer=False).runner.weights
    assert held.output is not None and LM_HEAD_KEY in read
    assert torch.equal(held.output, differs[LM_HEAD_KEY].to(torch.bfloat16))


def test_a_folder_without_lm_head_uses_the_embedding(tmp_path):
    weights = tied_state_dict(SMALL)
    del weights[LM_HEAD_KEY]  # as transformers' safetensors saving leaves a tied lm_head out
    folder = write_folder(tmp_path / "no-head", SMALL, weights)
    engine = glm_engine.load(folder, backend="cpu", dtype="fp32", tokenizer=False)
    held = engine.runner.weights
    assert held.output is None and held.logits_weight is held.word_embeddings
    with_head = write_folder(tmp_path / "with-head", SMALL, tied_state_dict(SMALL))
    reference = glm_engine.load(with_head, backend="cpu", dtype="fp32", tokenizer=False)
    ids = torch.tensor([[5, 9, 17, SMALL.gmask_token_id, SMALL.bos_token_id]])
    assert torch.equal(engine.forward(ids), reference.forward(ids))
    quantized = glm_engine.load(folder, backend="cpu", dtype="bf16", tokenizer=False, quant="int8", quant_output=True)
    assert quantized.runner.weights.output is not None  # a quantized output is a copy of its own, never tied
    untied = write_folder(tmp_path / "untied", dataclasses.replace(SMALL, tie_word_embeddings=False), weights)
    with pytest.raises(CheckpointError, match=r"missing: lm_head\.weight"):  # config.json says lm_head is its own
        glm_engine.load(untied, backend="cpu", dtype="fp32", tokenizer=False)


def test_the_glm_130b_families_tied_embedding_has_no_second_copy():
    engine = glm_engine.load("glm-tiny", backend="cpu", dtype="fp32", tokenizer=False)
    held = engine.runner.weights
    assert held.output is None
    assert held.held_bytes() == held.nbytes()


@pytest.mark.parametrize("stored", [torch.float16, torch.float32, torch.bfloat16])
def test_safetensors_tensors_are_read_converted_in_chunks(tmp_path, monkeypatch, stored):
    monkeypatch.setattr(stream, "CHUNK_BYTES", 64)  # many chunks, the last one partial
    values = {"a": torch.randn(37, 11).to(stored), "b": torch.randn(5).to(stored), "empty": torch.zeros(0, 3)}
    save_file(values, str(tmp_path / "w.safetensors"))
    weights = LazySafetensors(tmp_path / "w.safetensors")
    for key, value in values.items():
        assert torch.equal(weights[key], value) and weights[key].dtype == value.dtype
        assert torch.equal(weights.read_as(key, torch.bfloat16), value.to(torch.bfloat16))


def test_a_tensor_read_does_not_change_when_its_file_does(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(4, 4)}, str(path))
    read = LazySafetensors(path)["a"]
    save_file({"a": torch.zeros(4, 4)}, str(path))  # rewritten in place, same size
    assert torch.equal(read, torch.ones(4, 4))


# A ChatGLM-6B-shaped model small enough for a test, large enough that its weights dominate a load's fixed costs:
# embedding 64 MiB in bf16, stored twice in fp16 (embedding and an equal lm_head), so the load converts every tensor.
LARGE = ChatGLMConfig(
    num_layers=6,
    hidden_size=1024,
    num_attention_heads=16,
    inner_hidden_size=4096,
    vocab_size=32768,
    max_sequence_length=64,
    bos_token_id=124,
    eos_token_id=125,
    mask_token_id=120,
    gmask_token_id=121,
)
LOAD = "engine = glm_engine.load(src, backend='cpu', dtype='bf16', tokenizer=False)\nheld = engine.runner.weights"
# The measured bound: peak growth of loading below this multiple of the bytes the model holds, above the growth of
# loading a tiny model through the same code (interpreter allocations, op tables: the fixed allowance).
PEAK_OVER_HELD = 1.3


def test_loading_peaks_near_the_bytes_it_keeps(tmp_path):
    small = write_folder(tmp_path / "small", SMALL, tied_state_dict(SMALL))
    large = write_folder(tmp_path / "large", LARGE, tied_state_dict(LARGE))
    held = glm_engine.load(large, backend="cpu", dtype="bf16", tokenizer=False).runner.weights.held_bytes()
    fixed = measure_footprint(LOAD, "import glm_engine", {"src": str(small)})
    loaded = measure_footprint(LOAD, "import glm_engine", {"src": str(large)})
    if loaded.added_bytes is None or fixed.added_bytes is None:
        pytest.skip("no per-process peak resident set here (VmHWM)")
    growth = loaded.added_bytes - max(fixed.added_bytes, 0)
    assert growth < PEAK_OVER_HELD * held, f"peak grew {growth / 2**20:.0f} MiB to hold {held / 2**20:.0f} MiB"
