"""ONNX export with a KV cache and the onnxruntime backend: graph validity, parity with the engine, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'glm-engine[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'glm-engine[onnx]')")

from typer.testing import CliRunner  # noqa: E402

from glm_engine.backends.onnxruntime.backend import OnnxRuntimeBackend  # noqa: E402
from glm_engine.backends.onnxruntime.providers import choose_provider  # noqa: E402
from glm_engine.cli.main import app  # noqa: E402
from glm_engine.engine import DEFAULT_MODEL, load  # noqa: E402
from glm_engine.errors import BackendError, InputError  # noqa: E402
from glm_engine.export.onnx_export import export_onnx  # noqa: E402
from glm_engine.export.quant_onnx import TENSORRT_INT4_BLOCK_SIZES  # noqa: E402
from glm_engine.export.verify import (  # noqa: E402
    EXACT_QUANTIZED_NMSE_THRESHOLD,
    NMSE_THRESHOLDS,
    count_near_ties,
    nmse,
    verify_export,
)
from glm_engine.exported import DATA_FILE, GENAI_CONFIG_FILE, MODEL_FILE, QuantTarget, io_names  # noqa: E402
from glm_engine.generation.masks import generation_blocked  # noqa: E402
from glm_engine.quant.spec import QuantSpec  # noqa: E402

cli = CliRunner()


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("onnx") / "demo"
    export_onnx(DEFAULT_MODEL, folder, max_seq=256)
    return folder


def test_fp32_export_passes_the_checker_with_the_documented_io(demo_export):
    onnx.checker.check_model(str(demo_export / MODEL_FILE), full_check=True)
    model = onnx.load(str(demo_export / MODEL_FILE), load_external_data=False)
    names = io_names(4)
    assert [i.name for i in model.graph.input] == names["inputs"]
    assert [o.name for o in model.graph.output] == names["outputs"]
    past = next(i for i in model.graph.input if i.name == "past_key_values.0.key").type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in past] == ["batch_size", 3, "past_sequence_length", 64]
    described = json.loads((demo_export / GENAI_CONFIG_FILE).read_text())
    assert described["model"]["decoder"]["input_order"] == names["inputs"]
    assert described["model"]["decoder"]["shapes"]["logits"] == ["batch_size", "num_logits", 5056]
    assert described["model"]["context_length"] == 256
    assert described["model"]["special_tokens"]["gmask"] == 5001
    assert (demo_export / "ice_text.model").is_file()


def test_weights_live_only_in_the_external_data_file(demo_export):
    """The graph file holds no weight bytes: each was streamed to the data file as it was emitted."""
    model = onnx.load(str(demo_export / MODEL_FILE), load_external_data=False)
    big = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    inline = [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    assert len(big) > 50 and all(len(t.raw_data) <= 64 for t in inline)
    assert (demo_export / MODEL_FILE).stat().st_size < 100_000 < (demo_export / DATA_FILE).stat().st_size


def test_fp32_matches_the_engine_over_prefill_and_eight_cached_decode_steps(demo_export):
    report = verify_export(str(demo_export), DEFAULT_MODEL)
    assert report.prefill_nmse < NMSE_THRESHOLDS[torch.float32]
    assert len(report.decode_nmse) == 7 and max(report.decode_nmse) < NMSE_THRESHOLDS[torch.float32]
    assert report.tokens_match and len(report.engine_tokens) == 8 and len(report.engine_tokens[0]) == 2
    assert report.passed


def test_runner_batch_one_with_a_cache_matches_one_uncached_pass(demo_export):
    """Prefill 5 tokens then 2 cached steps equals one 7-token pass (empty past) on the same rows."""
    runner = OnnxRuntimeBackend().load_runner(str(demo_export))
    ids = torch.tensor([[10, 20, 30, 5001, 5004, 40, 50]])
    positions = torch.arange(7)[None]
    blocked = generation_blocked(5, 7)[None, None]
    whole = runner.forward(ids, positions, blocked)
    cache = runner.new_cache(1, 7)
    parts = [runner.forward(ids[:, :5], positions[:, :5], blocked[:, :, :5, :5], cache, last_only=True)]
    for column in (5, 6):
        step = (ids[:, column : column + 1], positions[:, column : column + 1], blocked[:, :, column : column + 1])
        parts.append(runner.forward(step[0], step[1], step[2][..., : column + 1], cache))
    assert cache.length == 7
    assert nmse(torch.cat(parts, 1), whole[:, 4:]) < 1e-10


def test_logits_to_keep_computes_only_the_asked_positions(demo_export):
    """The graph gathers the kept positions before the output projection: the last one alone equals the last row of
    every position, and the runner asks for it only with ``last_only``."""
    session = ort.InferenceSession(str(demo_export / MODEL_FILE), providers=["CPUExecutionProvider"])
    feeds = {
        "input_ids": torch.tensor([[10, 20, 30, 5001, 5004]]).numpy(),
        "position_ids": torch.arange(5)[None].numpy(),
        "attention_mask": generation_blocked(5, 5)[None, None].numpy(),
    }
    feeds.update({name: torch.zeros(1, 3, 0, 64).numpy() for name in io_names(4)["inputs"][4:]})
    every = session.run(["logits"], {**feeds, "logits_to_keep": torch.arange(5).numpy()})[0]
    last = session.run(["logits"], {**feeds, "logits_to_keep": torch.tensor([4]).numpy()})[0]
    assert every.shape == (1, 5, 5056) and last.shape == (1, 1, 5056)
    assert nmse(torch.from_numpy(last), torch.from_numpy(every[:, -1:])) < 1e-12
    runner = OnnxRuntimeBackend().load_runner(str(demo_export))
    ids, positions, blocked = (torch.from_numpy(feeds[k]) for k in ("input_ids", "position_ids", "attention_mask"))
    assert runner.forward(ids, positions, blocked, last_only=True).shape == (1, 1, 5056)
    assert runner.forward(ids, positions, blocked).shape == (1, 5, 5056)  # scoring still gets every position


def test_a_version_1_export_without_logits_to_keep_still_runs(demo_export, tmp_path):
    """Folders written before ``logits_to_keep`` (every position's logits) run; the runner slices the last one."""
    old = tmp_path / "v1"
    shutil.copytree(demo_export, old)
    model = onnx.load(str(old / MODEL_FILE), load_external_data=False)
    gather = next(n for n in model.graph.node if "logits_to_keep" in n.input)
    gather.op_type, gather.input[:] = "Identity", [gather.input[0]]
    del gather.attribute[:]
    keep = next(i for i in model.graph.input if i.name == "logits_to_keep")
    model.graph.input.remove(keep)
    onnx.save(model, str(old / MODEL_FILE))
    described = json.loads((old / GENAI_CONFIG_FILE).read_text())
    described["format_version"] = 1
    described["model"]["decoder"]["input_order"].remove("logits_to_keep")
    del described["files"]  # version 1 folders predate the files' sizes and checksums
    (old / GENAI_CONFIG_FILE).write_text(json.dumps(described))
    runner, new = (OnnxRuntimeBackend().load_runner(str(folder)) for folder in (old, demo_export))
    assert not runner.keeps_logits and new.keeps_logits
    ids, positions, blocked = torch.tensor([[10, 20, 5001, 5004]]), torch.arange(4)[None], generation_blocked(4, 4)
    every = runner.forward(ids, positions, blocked[None, None])
    assert every.shape == (1, 4, 5056)
    last = runner.forward(ids, positions, blocked[None, None], last_only=True)
    assert torch.equal(last, every[:, -1:])
    assert nmse(new.forward(ids, positions, blocked[None, None], last_only=True), last) < 1e-12


def test_perplexity_on_onnxruntime_scores_every_position_as_the_cpu_backend(demo_export):
    """Scoring calls forward without ``last_only``: the runner asks the graph for every position's logits."""
    from glm_engine.evaluation.perplexity import perplexity

    text = "The cat sat on the mat. The dog sat on the log, and then the cat and the dog sat together."
    on_ort = load(str(demo_export), backend="onnxruntime")
    on_cpu = load(DEFAULT_MODEL, backend="cpu", dtype="fp32")
    got = perplexity(on_ort.runner, on_ort.tokenizer, text, generation_length=8)
    want = perplexity(on_cpu.runner, on_cpu.tokenizer, text, generation_length=8)
    assert got.num_tokens == want.num_tokens > 10
    assert got.nll == pytest.approx(want.nll, rel=1e-6)


def test_the_kv_cache_stays_in_ort_values_between_steps(demo_export):
    """Each call's ``present`` values are the next call's ``past`` (I/O binding), not copied into a torch buffer."""
    runner = OnnxRuntimeBackend().load_runner(str(demo_export))
    ids, positions, blocked = torch.tensor([[10, 20, 5001, 5004, 40]]), torch.arange(5)[None], generation_blocked(4, 5)
    cache = runner.new_cache(1, 5)
    runner.forward(ids[:, :4], positions[:, :4], blocked[None, None, :4, :4], cache, last_only=True)
    first = cache.values[0]
    assert isinstance(first, ort.OrtValue) and first.shape() == [1, 3, 4, 64]
    runner.forward(ids[:, 4:], positions[:, 4:], blocked[None, None, 4:], cache)
    assert cache.length == 5 and cache.values[0].shape() == [1, 3, 5, 64]
    assert torch.equal(torch.from_numpy(cache.values[0].numpy()[:, :, :4]), torch.from_numpy(first.numpy()))
    with pytest.raises(InputError, match="KV cache holds 5 tokens"):
        runner.forward(ids[:, 4:], positions[:, 4:], blocked[None, None, 4:], cache)


def test_beam_search_on_onnxruntime_gives_the_cpu_backends_beams(demo_export):
    """Beam search expands and reorders the ORT cache (through numpy) exactly as the engine's cache."""
    options = dict(sampling_strategy="BeamSearchStrategy", num_beams=3, out_seq_length=12, deterministic=True)
    prompts = ["Hello [MASK] world", "Once upon a time"]
    ort_engine = load(str(demo_export), backend="onnxruntime")
    cpu_engine = load(DEFAULT_MODEL, backend="cpu", dtype="fp32")
    got = [c.token_ids for c in ort_engine.generate(prompts, **options)]
    assert got == [c.token_ids for c in cpu_engine.generate(prompts, **options)]
    assert all(len(beams) == 3 for beams in got)


@pytest.mark.parametrize(
    ("bits", "target", "op"), [(4, QuantTarget.ort, "MatMulNBits"), (8, QuantTarget.tensorrt, "DequantizeLinear")]
)
def test_quant_output_quantizes_the_output_projection_like_load_does(tmp_path, bits, target, op):
    """The logits go through a quantized copy of the embedding (no floating-point Gemm), matching
    ``load(..., quant_output=True)`` and the exact reference under --verify."""
    folder = tmp_path / "qo"
    export_onnx(DEFAULT_MODEL, folder, max_seq=64, quant=QuantSpec(bits), target=target, quant_output=True)
    model = onnx.load(str(folder / MODEL_FILE), load_external_data=False)
    assert sum(n.op_type == op for n in model.graph.node) == 4 * 4 + 1
    assert not any(n.op_type == "Gemm" for n in model.graph.node)
    assert any(i.name.startswith("output_projection.") for i in model.graph.initializer)
    assert json.loads((folder / GENAI_CONFIG_FILE).read_text())["quantization"]["output"] is True
    report = verify_export(str(folder), DEFAULT_MODEL)
    assert report.passed, report.describe()


def test_near_ties_are_counted_only_within_the_tolerance():
    logits = torch.tensor([[6.2, 6.19, 1.0], [5.0, 4.0, 1.0], [3.0, 2.0, 2.99]])
    want = logits.argmax(-1)
    got = torch.tensor([1, 1, 2])  # row 0: 0.01 below max (a tie at 1%), row 1: 1.0 below, row 2: 0.01 below
    assert count_near_ties(logits, want, got, 0.0) == 0
    assert count_near_ties(logits, want, got, 1 / 128) == 2
    assert count_near_ties(logits, want, want, 1 / 128) == 0  # equal tokens are not ties


def test_a_quant_output_export_passes_verify_where_the_cpu_backend_ties_in_bf16(tmp_path):
    """INT4 groupwise-64 with --quant-output on the demo model: at the last step the CPU backend's bf16 logits give
    two ids the same value and argmax takes the lower; the exact reference (fp32) must still agree exactly."""
    folder = tmp_path / "g64"
    export_onnx(DEFAULT_MODEL, folder, max_seq=64, quant=QuantSpec(4, 64), target=QuantTarget.ort, quant_output=True)
    report = verify_export(str(folder), DEFAULT_MODEL)
    assert report.passed, report.describe()
    assert report.near_ties == 0 and report.tie_tolerance == 0.0  # no slack against the exact reference
    assert report.also is not None and report.also.tie_tolerance == torch.finfo(torch.bfloat16).eps
    assert report.also.near_ties == 1  # the tie at the last step, accepted and counted


def test_quant_output_without_a_quantization_is_refused(tmp_path):
    with pytest.raises(InputError, match="--quant-output quantizes the output projection"):
        export_onnx(DEFAULT_MODEL, tmp_path / "x", max_seq=64, quant_output=True)
    assert not (tmp_path / "x").exists()


def test_fp16_export_matches_the_engine_in_fp16(tmp_path):
    export_onnx(DEFAULT_MODEL, tmp_path / "fp16", dtype=torch.float16, max_seq=64)
    assert verify_export(str(tmp_path / "fp16"), DEFAULT_MODEL).passed


def test_bf16_export_is_valid_but_the_ort_runner_says_why_it_cannot_run_it(tmp_path):
    export_onnx(DEFAULT_MODEL, tmp_path / "bf16", dtype=torch.bfloat16, max_seq=64)
    onnx.checker.check_model(str(tmp_path / "bf16" / MODEL_FILE), full_check=True)
    with pytest.raises(BackendError, match="bfloat16"):
        OnnxRuntimeBackend().load_runner(str(tmp_path / "bf16"))


QUANT_CASES = [
    (8, None, QuantTarget.ort, "MatMulNBits"),
    (8, 64, QuantTarget.ort, "MatMulNBits"),
    (4, None, QuantTarget.ort, "MatMulNBits"),
    (4, 64, QuantTarget.ort, "MatMulNBits"),
    (8, None, QuantTarget.tensorrt, "DequantizeLinear"),
    (4, None, QuantTarget.tensorrt, "DequantizeLinear"),
    (4, 64, QuantTarget.tensorrt, "DequantizeLinear"),
]


@pytest.mark.parametrize(("bits", "group", "target", "op"), QUANT_CASES)
def test_quantized_export_matches_the_engines_quantized_model(tmp_path, bits, group, target, op):
    folder = tmp_path / "q"
    export_onnx(DEFAULT_MODEL, folder, quant=QuantSpec(bits, group), target=target, max_seq=64)
    onnx.checker.check_model(str(folder / MODEL_FILE), full_check=True)
    model = onnx.load(str(folder / MODEL_FILE), load_external_data=False)
    assert sum(n.op_type == op for n in model.graph.node) == 16  # four linears in each of four layers
    if target is QuantTarget.tensorrt and bits == 4:
        weights = [t for t in model.graph.initializer if t.name.endswith(".qweight")]
        assert {t.data_type for t in weights} == {onnx.TensorProto.INT4}
        assert int4_block_sizes(model) <= set(TENSORRT_INT4_BLOCK_SIZES)
    report = verify_export(str(folder), DEFAULT_MODEL)
    assert report.passed, report.describe()
    assert max(report.prefill_nmse, *report.decode_nmse) < EXACT_QUANTIZED_NMSE_THRESHOLD  # the exact reference
    assert report.also is not None and report.also.passed  # and the CPU backend


def test_verify_catches_scales_one_percent_off_that_the_cpu_backend_comparison_lets_through(tmp_path, monkeypatch):
    from glm_engine.export import quant_onnx

    pack = quant_onnx.pack_matmul_nbits

    def corrupted(weight):
        packed, scales, block = pack(weight)
        signs = torch.sign(torch.randn(scales.shape[0], 1, generator=torch.Generator().manual_seed(1)))
        return packed, (scales * (1 + 0.01 * signs)).half(), block

    monkeypatch.setattr(quant_onnx, "pack_matmul_nbits", corrupted)
    export_onnx(DEFAULT_MODEL, tmp_path / "bad", quant=QuantSpec(4, None), max_seq=64)
    report = verify_export(str(tmp_path / "bad"), DEFAULT_MODEL)
    assert not report.passed and report.prefill_nmse > 100 * EXACT_QUANTIZED_NMSE_THRESHOLD
    assert report.also.passed  # the loose comparison alone would have passed this export
    assert "FAIL: against the exact fp32 reference" in report.describe()


def test_quantized_export_really_is_quantized(tmp_path):
    """Against the floating-point engine an INT4 export is far off: verify would catch a silently float graph."""
    export_onnx(DEFAULT_MODEL, tmp_path / "q4", quant=QuantSpec(4, None), max_seq=64)
    runner = OnnxRuntimeBackend().load_runner(str(tmp_path / "q4"))
    engine = load(DEFAULT_MODEL, backend="cpu", dtype="fp32")
    ids, positions = torch.tensor([[10, 20, 30, 5001, 5004]]), torch.arange(5)[None]
    blocked = generation_blocked(5, 5)[None, None]
    with torch.inference_mode():
        assert nmse(runner.forward(ids, positions, blocked), engine.runner.forward(ids, positions, blocked)) > 1e-3


def int4_block_sizes(model: onnx.ModelProto) -> set[int]:
    """The block_size of every DequantizeLinear whose input is an INT4 initializer (0 when it has none: per-axis)."""
    int4 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4}
    nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int4]
    assert len(nodes) == 16
    return {next((a.i for a in n.attribute if a.name == "block_size"), 0) for n in nodes}


def test_tensorrt_int4_rowwise_is_blocked_by_128_or_64_and_exact(tmp_path):
    """TensorRT builds INT4 only blocked (64 or 128): rowwise scales are repeated per block, 128 where it divides."""
    from glm_engine.model.glm130b.config import GLMConfig

    config = GLMConfig(
        num_layers=1,
        hidden_size=256,
        num_attention_heads=2,
        inner_hidden_size=192,
        vocab_size=150528,
        max_sequence_length=64,
    )
    export_onnx("glm-tiny", tmp_path / "q", quant=QuantSpec(4, None), target=QuantTarget.tensorrt, config=config)
    model = onnx.load(str(tmp_path / "q" / MODEL_FILE), load_external_data=False)
    int4 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4}
    nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int4]
    blocks = {n.input[0]: next(a.i for a in n.attribute if a.name == "block_size") for n in nodes}
    assert sorted(blocks.values()) == [64, 128, 128, 128]  # 4h_to_h reads 192 = 3 x 64; the rest read 256


@pytest.mark.parametrize(
    ("group", "config", "match"),
    [(32, None, "--group-size 128 or 64"), (None, "odd", "64 does not divide the input width 200")],
)
def test_int4_that_tensorrt_cannot_build_is_refused_before_writing(tmp_path, group, config, match):
    from glm_engine.model.glm130b.config import GLMConfig

    if config == "odd":
        config = GLMConfig(
            num_layers=1,
            hidden_size=200,
            num_attention_heads=5,
            inner_hidden_size=256,
            vocab_size=150528,
            max_sequence_length=64,
        )
    with pytest.raises(InputError, match=match):
        export_onnx("glm-tiny", tmp_path / "x", quant=QuantSpec(4, group), target=QuantTarget.tensorrt, config=config)
    assert not (tmp_path / "x").exists()


def test_int8_groupwise_for_tensorrt_is_refused_before_writing(tmp_path):
    with pytest.raises(InputError, match="only for INT4"):
        export_onnx(DEFAULT_MODEL, tmp_path / "x", quant=QuantSpec(8, 64), target=QuantTarget.tensorrt)
    assert not (tmp_path / "x").exists()


def test_an_interrupted_export_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    from glm_engine.export import decoder_onnx

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(decoder_onnx.DecoderGraph, "head", fail)
    with pytest.raises(RuntimeError):
        export_onnx(DEFAULT_MODEL, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_genai_config_is_moved_into_place_last(tmp_path, monkeypatch):
    """A crash between the renames must not leave a genai_config.json beside a missing graph or tokenizer."""
    from glm_engine.checkpoint import atomic

    moved, replace = [], atomic.os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (moved.append(Path(a).name), replace(a, b)))
    (tmp_path / "out").mkdir()  # an existing empty folder (a mount point, say) is filled entry by entry
    export_onnx(DEFAULT_MODEL, tmp_path / "out", max_seq=32)
    assert moved[-1] == GENAI_CONFIG_FILE and {MODEL_FILE, DATA_FILE, "ice_text.model"} <= set(moved[:-1])


def test_preset_export_with_glm130b_vocabulary_matches(tmp_path):
    export_onnx("glm-tiny", tmp_path / "tiny", max_seq=64)
    assert verify_export(str(tmp_path / "tiny"), "glm-tiny").passed


def test_verify_fits_its_steps_into_a_short_export_and_refuses_one_too_short(tmp_path):
    export_onnx(DEFAULT_MODEL, tmp_path / "s12", max_seq=12)
    report = verify_export(str(tmp_path / "s12"), DEFAULT_MODEL)
    assert report.passed and len(report.engine_tokens) == 3  # 9 prompt tokens + 3 steps = 12 positions
    export_onnx(DEFAULT_MODEL, tmp_path / "s10", max_seq=10)
    with pytest.raises(InputError, match="--max-seq >= 11"):
        verify_export(str(tmp_path / "s10"), DEFAULT_MODEL)


def test_cli_refuses_verify_of_a_too_short_export_before_writing_it(tmp_path):
    result = cli.invoke(app, ["export", "onnx", "--output", str(tmp_path / "e"), "--max-seq", "9", "--verify"])
    assert result.exit_code == 1 and "--max-seq >= 11" in result.output
    assert not (tmp_path / "e").exists()


def test_ort_runner_refuses_positions_beyond_the_exports_context(tmp_path):
    export_onnx(DEFAULT_MODEL, tmp_path / "s8", max_seq=8)
    runner = OnnxRuntimeBackend().load_runner(str(tmp_path / "s8"))
    ids = torch.tensor([[10, 20, 30, 5001, 5004]])
    runner.forward(ids, torch.tensor([[3, 4, 5, 6, 7]]), generation_blocked(5, 5)[None, None])  # the last row fits
    with pytest.raises(InputError, match=r"context length 8.*--max-seq"):
        runner.forward(ids, torch.tensor([[4, 5, 6, 7, 8]]), generation_blocked(5, 5)[None, None])


def test_provider_choice_and_reasons():
    assert choose_provider(None, ["CPUExecutionProvider"])[0].short == "cpu"
    assert (
        choose_provider(None, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])[0].short
        == "cuda"
    )  # TensorRT only on request: it compiles an engine when a session starts
    with pytest.raises(BackendError, match="onnxruntime-gpu"):
        choose_provider("cuda", ["CPUExecutionProvider"])
    with pytest.raises(BackendError, match="known"):
        choose_provider("dml", ["CPUExecutionProvider"])


def test_cli_export_with_verify_then_run_on_onnxruntime_end_to_end(tmp_path):
    folder = tmp_path / "exported"
    result = cli.invoke(app, ["export", "onnx", "--output", str(folder), "--max-seq", "128", "--verify"])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output
    queries = tmp_path / "q.txt"
    queries.write_text("Hello [MASK] world\nOnce upon a time\n", encoding="utf-8")
    common = ["--input-source", str(queries), "--out-seq-length", "24", "--seed", "3"]
    answers = {}
    for backend, checkpoint in (("onnxruntime", str(folder)), ("cpu", DEFAULT_MODEL)):
        out = tmp_path / backend
        args = ["run", "--backend", backend, "--checkpoint", checkpoint, "--output-path", str(out), *common]
        result = cli.invoke(app, args)
        assert result.exit_code == 0, result.output
        answers[backend] = sorted(f.read_text(encoding="utf-8") for f in out.iterdir())
    assert answers["onnxruntime"] == answers["cpu"] and len(answers["cpu"]) == 2
    beams = ["--sampling-strategy", "BeamSearchStrategy", "--num-beams", "2", "--deterministic"]
    result = cli.invoke(
        app,
        ["run", "--backend", "onnxruntime", "--checkpoint", str(folder), "--output-path", str(tmp_path / "b")]
        + common
        + beams,
    )
    assert result.exit_code == 0, result.output


def test_cli_refuses_a_provider_this_build_lacks(tmp_path, demo_export):
    queries = tmp_path / "q.txt"
    queries.write_text("Hello [MASK]\n", encoding="utf-8")
    args = ["run", "--backend", "onnxruntime", "--checkpoint", str(demo_export), "--ort-provider", "migraphx"]
    result = cli.invoke(app, [*args, "--input-source", str(queries), "--output-path", str(tmp_path / "o")])
    assert result.exit_code == 1 and "onnxruntime-migraphx" in result.output


def test_cli_run_names_the_backend_an_exported_folder_needs(tmp_path, demo_export):
    queries = tmp_path / "q.txt"
    queries.write_text("Hello [MASK]\n", encoding="utf-8")
    common = ["--input-source", str(queries), "--output-path", str(tmp_path / "o")]
    result = cli.invoke(app, ["run", "--backend", "cpu", "--checkpoint", str(demo_export), *common])
    assert result.exit_code == 1 and "is an ONNX export: use --backend onnxruntime" in result.output
    result = cli.invoke(app, ["run", "--checkpoint", str(demo_export), *common])  # auto
    assert result.exit_code == 1 and "use --backend onnxruntime" in result.output


def test_cli_refuses_ort_provider_with_another_backend(tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("Hello [MASK]\n", encoding="utf-8")
    args = ["run", "--backend", "cpu", "--ort-provider", "cpu", "--input-source", str(queries)]
    result = cli.invoke(app, [*args, "--output-path", str(tmp_path / "o")])
    assert result.exit_code == 1 and "goes with --backend onnxruntime, not --backend cpu" in result.output
    assert not (tmp_path / "o").exists()


def test_backends_lists_onnxruntime_providers_and_why_others_are_missing():
    result = cli.invoke(app, ["backends", "--format", "json"])
    row = next(r for r in json.loads(result.output) if r["name"] == "onnxruntime")
    assert row["available"] and row["kind"] == "graph-level"
    assert row["devices"][-1]["name"] == "CPUExecutionProvider"
    assert "onnxruntime-gpu" in row["reason"]


def test_int8_activation_matmulnbits_is_held_to_its_own_stated_threshold(tmp_path):
    """accuracy_level 4 (ORT's fast CPU path) is recorded in genai_config and verified at 5e-3 with equal tokens."""
    from glm_engine.export.verify import INT8_ACTIVATIONS_NMSE_THRESHOLD

    export_onnx(DEFAULT_MODEL, tmp_path / "fast", quant=QuantSpec(8, None), accuracy_level=4, max_seq=64)
    described = json.loads((tmp_path / "fast" / GENAI_CONFIG_FILE).read_text())
    assert described["quantization"]["accuracy_level"] == 4
    report = verify_export(str(tmp_path / "fast"), DEFAULT_MODEL)
    assert report.threshold == INT8_ACTIVATIONS_NMSE_THRESHOLD and report.passed, report.describe()
    assert max(report.decode_nmse) > 1e-5  # activations really are quantized: far above the exact path's error


def test_export_options_that_cannot_work_are_refused_before_writing(tmp_path):
    zero = cli.invoke(app, ["export", "onnx", "--output", str(tmp_path / "z"), "--max-seq", "0"])
    assert zero.exit_code == 1 and "--max-seq" in zero.output and not (tmp_path / "z").exists()
    bf16 = ["export", "onnx", "--output", str(tmp_path / "b"), "--dtype", "bf16", "--max-seq", "32", "--verify"]
    result = cli.invoke(app, bf16)
    assert result.exit_code == 1 and "cannot feed bf16 graphs" in result.output and not (tmp_path / "b").exists()


def test_an_export_at_tp_above_1_is_refused_before_any_rank_starts(demo_export):
    """An exported graph has no tensor-parallel form: one error line, no ranks launched (they would fail one by one)."""
    args = ["run", "--checkpoint", str(demo_export), "--backend", "onnxruntime", "--tp", "2"]
    result = CliRunner().invoke(app, args, input="stop\n")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "is an exported graph, which has no tensor-parallel form; use --tp 1" in result.output
