"""Multi-shard SAT checkpoints, re-sharding (load time and convert-tp), quantized conversion and the native format.

Source shards are written in the reference's own layout by an independent transcription of its convert_tp.py
(tests/reference_tp.py), so these tests do not check our split rules against themselves.
"""

from __future__ import annotations

import pytest
import torch
from reference_tp import reference_shards
from safetensors.torch import save_file

import glm_engine
from glm_engine.checkpoint import open_checkpoint
from glm_engine.checkpoint.convert import convert_to_native, convert_tp
from glm_engine.checkpoint.native import INDEX_FILE_NAME, save_native
from glm_engine.errors import CheckpointError, OutputError, ParallelError
from glm_engine.model.glm130b.weights import is_quantized_key, parameter_shapes, random_state_dict, split_of
from glm_engine.parallel.sharding import reshard
from glm_engine.quant.spec import QuantSpec
from glm_engine.quant.weight import QuantizedWeight

INV_FREQ = "transformer.layers.0.attention.rotary_emb.inv_freq"


def write_reference_sat(folder, shards, config=None, tag="49300"):
    """``latest`` + ``<tag>/mp_rank_XX_model_states.pt`` holding ``{"module": shard}``, as the release."""
    (folder / tag).mkdir(parents=True)
    (folder / "latest").write_text(tag)  # the release's file has no trailing newline
    for rank, shard in enumerate(shards):
        torch.save({"module": shard, "iteration": 49300}, folder / tag / f"mp_rank_{rank:02d}_model_states.pt")
    if config is not None:
        config.to_json_file(folder / "config.json")
    return folder


def read_shards(folder, tag="49300"):
    files = sorted((folder / tag).glob("mp_rank_*_model_states.pt"))
    return [torch.load(f, weights_only=True)["module"] for f in files]


@pytest.fixture
def full(small_config):
    state = random_state_dict(small_config, seed=11, dtype=torch.float16)
    state[INV_FREQ] = torch.arange(8, dtype=torch.float32)
    return state


@pytest.fixture
def tp4(tmp_path, small_config, full):
    return write_reference_sat(tmp_path / "tp4", reference_shards(full, 4), small_config)


def test_tp4_round_trips_through_tp1_and_tp2_bit_for_bit(tmp_path, tp4, full):
    convert_tp(tp4, tmp_path / "tp1", 1)
    convert_tp(tmp_path / "tp1", tmp_path / "tp2", 2)
    convert_tp(tmp_path / "tp2", tmp_path / "back", 4)
    assert (tmp_path / "tp1" / "latest").read_text() == "49300"  # no newline: convert_tp.py does not strip
    (tp1,) = read_shards(tmp_path / "tp1")
    assert set(tp1) == set(full) and all(torch.equal(tp1[k], full[k]) for k in full)
    for got, expected in zip(read_shards(tmp_path / "tp2"), reference_shards(full, 2)):
        assert all(torch.equal(got[k], expected[k]) for k in expected)
    for got, expected in zip(read_shards(tmp_path / "back"), read_shards(tp4)):
        assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
        assert all(got[k].dtype == expected[k].dtype for k in expected)


def test_a_tp4_checkpoint_runs_at_tp1_with_the_weights_of_the_original(tmp_path, tp4, full, small_config):
    save_native(tmp_path / "native", small_config, {k: v for k, v in full.items() if k != INV_FREQ})
    checkpoint = open_checkpoint(tp4)
    assert (checkpoint.format, checkpoint.source_tp, checkpoint.bits) == ("sat", 4, None)
    assert checkpoint.unused_keys == [INV_FREQ]
    sat = glm_engine.load(str(tp4), tokenizer=False, dtype="fp32")
    ref = glm_engine.load(str(tmp_path / "native"), tokenizer=False, dtype="fp32")
    ids = torch.tensor([[30, 31, 32]])
    blocked = ~torch.ones(3, 3, dtype=torch.bool).tril()[None, None]
    positions = torch.arange(3)[None]
    assert torch.equal(sat.forward(ids, positions, blocked), ref.forward(ids, positions, blocked))


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_load_time_resharding_gives_each_rank_its_reference_shard(tp4, full, tp):
    checkpoint = open_checkpoint(tp4)
    expected = reference_shards(full, tp)
    for rank in range(tp):
        state = checkpoint.rank_state_dict(rank, tp, torch.float16)
        assert all(torch.equal(state[k], expected[rank][k]) for k in state)


def reference_quantize(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """docs/glm-semantics.md#weight-only-quantization-formula in float64 arithmetic with explicit fp16 roundings, INT4
    packed by hand."""
    w = weight.to(torch.float16).double()
    scale = (w.abs().max(dim=1).values.float() / (2 ** (bits - 1) - 1)).half()
    q = torch.round((w.float() / scale.float()[:, None]).half().double()).to(torch.int8)
    if bits == 4:  # two's-complement nibbles by hand: even column high, odd column low
        high, low = q[:, 0::2].to(torch.int32) & 0xF, q[:, 1::2].to(torch.int32) & 0xF
        q = ((high << 4) | low).to(torch.uint8).view(torch.int8)
    return q, scale


LINEARS = (
    "attention.query_key_value.weight",
    "attention.dense.weight",  # row-parallel: absmax over the rank's input slice
    "mlp.dense_h_to_4h.weight",
    "mlp.dense_4h_to_h.weight",  # row-parallel
)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_conversion_matches_the_reference_formula_per_local_shard(tmp_path, tp4, full, bits):
    convert_tp(tp4, tmp_path / "q", 2, bits=bits)
    for shard, local in zip(read_shards(tmp_path / "q"), reference_shards(full, 2)):
        for layer in range(3):
            for name in LINEARS:
                key = f"transformer.layers.{layer}.{name}"
                q, scale = reference_quantize(local[key], bits)
                assert torch.equal(shard[key], q) and torch.equal(shard[key + "_scale"], scale)
                assert shard[key].dtype == torch.int8 and shard[key + "_scale"].dtype == torch.float16
        assert shard["transformer.layers.1.mlp.dense_4h_to_h.bias"].dtype == torch.float16
        assert shard["transformer.word_embeddings.weight"].dtype == torch.float16
    checkpoint = open_checkpoint(tmp_path / "q")
    assert (checkpoint.source_tp, checkpoint.bits) == (2, bits)


def test_quantized_checkpoints_load_dequantized_at_any_tp(tmp_path, tp4, full):
    convert_tp(tp4, tmp_path / "q", 2, bits=8)
    checkpoint = open_checkpoint(tmp_path / "q")
    merged = checkpoint.rank_state_dict(0, 1, torch.float32, keep_quantized=False)
    key = "transformer.layers.2.attention.dense.weight"
    halves = [reference_quantize(s[key], 8) for s in reference_shards(full, 2)]
    expected = torch.cat([q.half() * s[:, None] for q, s in halves], dim=1).float()
    assert torch.equal(merged[key], expected)
    error = (merged[key] - full[key].float()).abs().max()
    assert 0 < error < full[key].float().abs().max() / 127


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_quantized_checkpoints_reshard_without_dequantizing_bit_for_bit(tmp_path, tp4, bits, tp):
    """Loaded quantized at any TP, each rank's weight dequantizes to exactly its slice of the source's weights."""
    convert_tp(tp4, tmp_path / "q", 2, bits=bits)
    checkpoint = open_checkpoint(tmp_path / "q")
    reference = checkpoint.rank_state_dict(0, 1, torch.float16, keep_quantized=False)  # dequantized, then merged
    for rank in range(tp):
        state = checkpoint.rank_state_dict(rank, tp, torch.float16)
        for layer in range(3):
            for name in LINEARS:
                key = f"transformer.layers.{layer}.{name}"
                weight = state[key]
                assert isinstance(weight, QuantizedWeight) and weight.bits == bits
                expected = reshard(split_of(key), [reference[key]], rank, tp)
                assert torch.equal(weight.dequantize(torch.float16), expected), (key, rank)
        assert state["transformer.layers.0.input_layernorm.weight"].dtype == torch.float16


def test_runtime_quantization_quantizes_each_rank_shard(tmp_path, tp4, full):
    """Rowwise scales of a row-parallel weight come from each rank's own input slice, as the reference computes."""
    checkpoint = open_checkpoint(tp4)
    shards = reference_shards(full, 2)
    key = "transformer.layers.1.mlp.dense_4h_to_h.weight"
    whole = QuantizedWeight.quantize(full[key], 4)
    for rank in range(2):
        state = checkpoint.rank_state_dict(rank, 2, torch.float32, quant=QuantSpec(4))
        expected = QuantizedWeight.quantize(shards[rank][key], 4)
        assert torch.equal(state[key].stored, expected.stored) and torch.equal(state[key].scale, expected.scale)
        assert not torch.equal(state[key].scale, whole.scale)  # not the whole matrix's scales, split afterwards
        assert state["transformer.word_embeddings.weight"].dtype == torch.float32


def test_quantized_checkpoints_are_not_resharded(tmp_path, tp4):
    convert_tp(tp4, tmp_path / "q", 2, bits=4)
    with pytest.raises(CheckpointError, match="already quantized"):
        convert_tp(tmp_path / "q", tmp_path / "q1", 1)


def test_mixed_or_malformed_quantized_files_are_named(tmp_path, tp4, small_config):
    convert_tp(tp4, tmp_path / "q", 2, bits=8)
    path = tmp_path / "q" / "49300" / "mp_rank_01_model_states.pt"
    shard = torch.load(path, weights_only=True)["module"]
    key = "transformer.layers.0.attention.query_key_value.weight"
    shard[key] = shard[key][:, :5].contiguous()
    torch.save({"module": shard}, path)
    with pytest.raises(CheckpointError, match=r"mp_rank_01.*query_key_value.weight has 5 columns"):
        open_checkpoint(tmp_path / "q")
    convert_tp(tp4, tmp_path / "q4", 2, bits=4)
    path.write_bytes((tmp_path / "q4" / "49300" / "mp_rank_01_model_states.pt").read_bytes())
    with pytest.raises(CheckpointError, match=r"mp_rank_01_model_states.pt is INT4 but .*mp_rank_00.* is INT8"):
        open_checkpoint(tmp_path / "q")


def test_shard_errors_name_the_file(tmp_path, small_config, full):
    shards = reference_shards(full, 2)
    del shards[1]["transformer.layers.2.input_layernorm.bias"]
    shards[1]["transformer.layers.0.mlp.dense_h_to_4h.weight"] = torch.zeros(10, 64, dtype=torch.float16)
    write_reference_sat(tmp_path / "bad", shards, small_config)
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(tmp_path / "bad")
    message = str(info.value)
    assert "mp_rank_01_model_states.pt" in message and "TP=2" in message
    assert "1 missing: transformer.layers.2.input_layernorm.bias" in message
    assert "transformer.layers.0.mlp.dense_h_to_4h.weight is [10, 64], expected [96, 64]" in message


def test_invalid_target_tp_lists_the_valid_degrees(tmp_path, tp4):
    with pytest.raises(ParallelError, match="valid degrees: 1, 2, 4"):
        convert_tp(tp4, tmp_path / "x", 3)
    assert not (tmp_path / "x").exists()


def test_conversion_refuses_to_overwrite_and_leaves_nothing_half_written(tmp_path, tp4, monkeypatch):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep me")
    with pytest.raises(OutputError, match="not empty"):
        convert_tp(tp4, tmp_path / "taken", 2)
    assert (tmp_path / "taken" / "file").read_text() == "keep me"

    from glm_engine.checkpoint import sat

    calls = []

    def failing_write(path, state):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        torch.save({"module": state}, path)

    monkeypatch.setattr(sat, "write_sat_shard", failing_write)
    with pytest.raises(OSError, match="disk full"):
        convert_tp(tp4, tmp_path / "out", 2)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_sat_without_config_is_recognised_by_its_shapes(tmp_path, monkeypatch, small_config, full):
    from glm_engine.model.glm130b import config as config_module

    monkeypatch.setitem(config_module.PRESETS, "small", small_config)
    folder = write_reference_sat(tmp_path / "noconfig", reference_shards(full, 2))
    assert open_checkpoint(folder).config == small_config


def test_sat_to_native_sharded_with_index_loads_by_mmap(tmp_path, tp4, full, small_config):
    convert_to_native(tp4, tmp_path / "native", max_shard_bytes=40_000)
    names = sorted(p.name for p in (tmp_path / "native").iterdir())
    assert INDEX_FILE_NAME in names and "config.json" in names
    files = [n for n in names if n.startswith("model-")]
    assert len(files) > 2 and files[0].endswith(f"-of-{len(files):05d}.safetensors")
    checkpoint = open_checkpoint(tmp_path / "native")
    assert checkpoint.format == "native" and len(checkpoint.files) == len(files)
    merged = checkpoint.rank_state_dict(0, 1, torch.float16)
    assert all(torch.equal(merged[k], full[k]) for k in merged)
    convert_tp(tmp_path / "native", tmp_path / "sat2", 2)
    for got, expected in zip(read_shards(tmp_path / "sat2", "release"), reference_shards(full, 2)):
        assert all(torch.equal(got[k], expected[k]) for k in got)


def test_native_index_pointing_at_missing_keys_is_an_error(tmp_path, small_config, full):
    folder = tmp_path / "n"
    folder.mkdir()
    small_config.to_json_file(folder / "config.json")
    save_file({"a": torch.zeros(1)}, str(folder / "model-00001-of-00001.safetensors"))
    (folder / INDEX_FILE_NAME).write_text('{"weight_map": {"b": "model-00001-of-00001.safetensors"}}')
    with pytest.raises(CheckpointError, match="lists keys its files do not hold: b"):
        open_checkpoint(folder)


def test_conversions_keep_each_tensors_dtype(tmp_path, small_config, full):
    mixed = dict(full)
    mixed["transformer.layers.0.input_layernorm.weight"] = full["transformer.layers.0.input_layernorm.weight"].float()
    folder = write_reference_sat(tmp_path / "mixed", reference_shards(mixed, 2), small_config)
    convert_tp(folder, tmp_path / "tp1", 1)
    (tp1,) = read_shards(tmp_path / "tp1")
    assert all(tp1[k].dtype == mixed[k].dtype and torch.equal(tp1[k], mixed[k]) for k in mixed)
    convert_to_native(folder, tmp_path / "native")
    merged = open_checkpoint(tmp_path / "native").rank_state_dict(0, 1, None)
    assert merged["transformer.layers.0.input_layernorm.weight"].dtype == torch.float32


@pytest.mark.parametrize("kind", ["empty folder", "symlink to an empty folder"])
def test_an_existing_empty_output_folder_is_filled_in_place(tmp_path, tp4, kind):
    target = tmp_path / "disk" / "out"
    target.mkdir(parents=True)
    output = target
    if kind.startswith("symlink"):
        output = tmp_path / "link"
        output.symlink_to(target)
    convert_tp(tp4, output, 2)
    assert sorted(p.name for p in target.iterdir()) == ["49300", "config.json", "latest"]
    assert open_checkpoint(output).source_tp == 2


def test_unused_keys_of_every_shard_are_reported_and_carried_through(tmp_path, small_config, full):
    shards = reference_shards(full, 2)
    shards[1]["optimizer.step"] = torch.tensor(3)
    folder = write_reference_sat(tmp_path / "extra", shards, small_config)
    assert open_checkpoint(folder).unused_keys == sorted([INV_FREQ, "optimizer.step"])
    convert_tp(folder, tmp_path / "tp1", 1)
    (tp1,) = read_shards(tmp_path / "tp1")
    assert tp1["optimizer.step"].item() == 3 and torch.equal(tp1[INV_FREQ], full[INV_FREQ])


def test_quantizing_while_merging_sources_holds_one_float_linear_at_a_time(monkeypatch, tp4):
    """TP=4 -> TP=1 with quantization: each linear is assembled from all four sources and quantized before the next
    one starts, instead of every linear waiting in floating point for the last source shard."""
    from glm_engine.checkpoint import reader

    started: set[str] = set()
    most = 0
    original_add, original_finish = reader.ShardBuilder.add, reader.ShardBuilder.finish

    def add(self, source_rank, tensor):
        nonlocal most
        if is_quantized_key(self.key):
            started.add(self.key)
            most = max(most, len(started))
        return original_add(self, source_rank, tensor)

    def finish(self):
        started.discard(self.key)
        return original_finish(self)

    monkeypatch.setattr(reader.ShardBuilder, "add", add)
    monkeypatch.setattr(reader.ShardBuilder, "finish", finish)
    state = open_checkpoint(tp4).rank_state_dict(0, 1, torch.float32, quant=QuantSpec(8))
    assert most == 1 and isinstance(state["transformer.layers.0.mlp.dense_4h_to_h.weight"], QuantizedWeight)


def test_a_quantized_checkpoint_is_checked_in_the_formats_its_linears_take_at_the_target_tp(
    tmp_path, tp4, small_config
):
    """Merging TP=4 rowwise INT8 shards into fewer ranks makes the row-parallel linears groupwise (one scale per source
    slice): the load checks and reports those formats, not only the stored rowwise one."""
    convert_tp(tp4, tmp_path / "q", 4, bits=8)
    checkpoint = open_checkpoint(tmp_path / "q")
    shapes = parameter_shapes(small_config, 4)
    dense = shapes["transformer.layers.0.attention.dense.weight"][1]
    down = shapes["transformer.layers.0.mlp.dense_4h_to_h.weight"][1]
    assert checkpoint.runtime_quant_specs(4) == [QuantSpec(8)]
    assert checkpoint.runtime_quant_specs(1) == [QuantSpec(8), QuantSpec(8, dense), QuantSpec(8, down)]
    engine = glm_engine.load(str(tmp_path / "q"), dtype="fp32", tokenizer=False)
    assert f"linears in INT8 groupwise, {down} columns per scale" in "\n".join(engine.notes)
    weight = engine.runner.weights.layers[0].dense_4h_to_h_weight
    assert weight.format.value == "int8-groupwise"


def test_written_files_take_the_umasks_mode_like_any_other_file(tmp_path, small_config):
    """safetensors creates its files 0600; a shared model folder must stay readable to the group and others."""
    import os
    import stat

    from glm_engine.checkpoint.atomic import file_mode

    state = random_state_dict(small_config, seed=0)
    folder = save_native(tmp_path / "native", small_config, state)
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in folder.iterdir() if p.is_file()}
    assert any(name.endswith(".safetensors") for name in modes)
    assert set(modes.values()) == {file_mode()}, modes
