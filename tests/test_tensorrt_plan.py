"""TensorRT: everything up to the builder call is pinned here (profiles, cache keys, binding plans, the ONNX a
TensorRT build takes); building and running engines is tested only where TensorRT and a GPU exist."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'glm-engine[onnx]')")

from typer.testing import CliRunner  # noqa: E402

from glm_engine.backends.tensorrt.build import build_engine, tensorrt_missing_reason  # noqa: E402
from glm_engine.backends.tensorrt.plan import (  # noqa: E402
    DECODE,
    PREFILL,
    GpuIdentity,
    GraphIO,
    Limits,
    binding_plan,
    cache_key,
    check_call,
    plan_profiles,
    profile_for,
)
from glm_engine.cli.main import app  # noqa: E402
from glm_engine.engine import DEFAULT_MODEL  # noqa: E402
from glm_engine.errors import InputError  # noqa: E402
from glm_engine.export.decoder_onnx import DecoderGraph, QuantEmit  # noqa: E402
from glm_engine.export.onnx_builder import GraphBuilder  # noqa: E402
from glm_engine.export.onnx_export import export_onnx  # noqa: E402
from glm_engine.export.verify import verify_export  # noqa: E402
from glm_engine.exported import MODEL_FILE, QuantTarget, read_exported  # noqa: E402
from glm_engine.exported.names import OPSET  # noqa: E402
from glm_engine.model.registry import preset_family  # noqa: E402
from glm_engine.quant.spec import QuantSpec  # noqa: E402

TRT_MISSING = tensorrt_missing_reason()


@pytest.fixture(scope="module")
def trt_export(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("trt") / "int4"
    export_onnx(DEFAULT_MODEL, folder, quant=QuantSpec(4, 64), target=QuantTarget.tensorrt, max_seq=256)
    return folder


@pytest.fixture(scope="module")
def io(trt_export) -> GraphIO:
    return GraphIO.from_genai_config(read_exported(trt_export).description)


def test_graph_io_is_read_from_the_export(io):
    assert (io.num_layers, io.num_kv_heads, io.head_size, io.vocab_size) == (4, 3, 64, 5056)
    assert io.context_length == 256 and io.position_rows == 1 and io.dtype == "fp32" and io.keeps_logits


def test_profiles_cover_prefill_on_an_empty_cache_and_one_token_decode(io):
    prefill, decode = plan_profiles(io, Limits(max_batch=4, max_seq=256, opt_seq=64))
    assert (prefill.name, decode.name) == (PREFILL, DECODE)
    assert prefill.shapes["input_ids"] == ((1, 1), (1, 64), (4, 256))
    assert prefill.shapes["attention_mask"] == ((1, 1, 1, 1), (1, 1, 64, 64), (4, 1, 256, 256))
    assert prefill.shapes["past_key_values.3.value"] == ((1, 3, 0, 64), (1, 3, 0, 64), (4, 3, 0, 64))
    assert decode.shapes["input_ids"] == ((1, 1), (1, 1), (4, 1))
    assert decode.shapes["attention_mask"] == ((1, 1, 1, 1), (1, 1, 1, 65), (4, 1, 1, 256))
    assert decode.shapes["past_key_values.0.key"] == ((1, 3, 0, 64), (1, 3, 64, 64), (4, 3, 255, 64))
    assert prefill.shapes["logits_to_keep"] == ((1,), (1,), (256,))  # tuned for generation, up to every position
    assert decode.shapes["logits_to_keep"] == ((1,), (1,), (1,))
    assert set(prefill.shapes) == set(decode.shapes) == set(read_inputs(io))


def read_inputs(io: GraphIO) -> list[str]:
    return ["input_ids", "position_ids", "attention_mask", "logits_to_keep", *io.kv_names()]


def test_profiles_refuse_more_positions_than_the_graph_has(io):
    with pytest.raises(InputError, match="re-export"):
        plan_profiles(io, Limits(1, 512, 64))


@pytest.mark.parametrize("kwargs", [dict(max_batch=0), dict(max_seq=1), dict(opt_seq=300), dict(opt_batch=9)])
def test_limits_refuse_impossible_values(kwargs):
    values = dict(max_batch=8, max_seq=256, opt_seq=64) | kwargs
    with pytest.raises(InputError):
        Limits(**values)


def test_each_call_picks_its_profile():
    assert profile_for(0, 17) == PREFILL and profile_for(0, 1) == PREFILL and profile_for(5, 1) == DECODE
    with pytest.raises(InputError, match="one token"):
        profile_for(5, 3)


def test_a_call_beyond_the_engines_limits_names_the_flag_to_raise():
    limits = Limits(max_batch=2, max_seq=64, opt_seq=16)
    check_call(limits, 2, 63, 1)  # the largest call that fits
    with pytest.raises(InputError, match="--max-batch"):
        check_call(limits, 3, 0, 8)
    with pytest.raises(InputError, match="--max-seq"):
        check_call(limits, 1, 64, 1)
    with pytest.raises(InputError, match="--max-seq"):
        check_call(limits, 1, 0, 65)


def test_the_cache_key_changes_with_each_thing_an_engine_depends_on(io):
    profiles = plan_profiles(io, Limits(2, 128, 32))
    h100 = GpuIdentity("NVIDIA H100 80GB HBM3", "sm_90", 132, 85 << 30)
    base = ("w" * 64, "g" * 64, "10.9.0", h100, profiles, 8 << 30)
    key = cache_key(*base)
    assert key == cache_key(*base)  # stable: a rebuild happens only when needed
    gpus = [
        dataclasses.replace(h100, name="NVIDIA H100 PCIe"),
        dataclasses.replace(h100, compute_capability="sm_80"),
        dataclasses.replace(h100, sm_count=16),  # a MIG slice of the same GPU
        dataclasses.replace(h100, total_memory=40 << 30),
    ]
    changed = [
        ("x" * 64, *base[1:]),
        (base[0], "h" * 64, *base[2:]),
        (*base[:2], "10.10.0", *base[3:]),
        *((*base[:3], gpu, *base[4:]) for gpu in gpus),
        (*base[:4], plan_profiles(io, Limits(2, 128, 64)), base[5]),
        (*base[:5], 4 << 30),
    ]
    assert len({key, *(cache_key(*c) for c in changed)}) == 1 + len(changed)


def test_the_binding_plan_names_every_engine_input_and_output_once(io, trt_export):
    plan = binding_plan(io, Limits(2, 128, 32))
    model = onnx.load(str(trt_export / MODEL_FILE), load_external_data=False)
    assert [b.name for b in plan if b.is_input] == [i.name for i in model.graph.input]
    assert sorted(b.name for b in plan if not b.is_input) == sorted(o.name for o in model.graph.output)
    kv = next(b for b in plan if b.name == "present.2.value")
    assert kv.capacity == 2 * 3 * 128 * 64 and not kv.is_input
    assert next(b for b in plan if b.name == "logits").capacity == 2 * 128 * 5056


def test_the_tensorrt_target_emits_only_standard_symmetric_int4_dequantization(trt_export):
    """What TensorRT's parser takes: opset 21, no contrib ops, INT4 weights, no zero points (symmetric)."""
    model = onnx.load(str(trt_export / MODEL_FILE), load_external_data=False)
    assert {o.domain for o in model.opset_import} == {""} and model.opset_import[0].version == 21
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 16 and all(len(n.input) == 2 for n in dq)
    assert all({a.name: a.i for a in n.attribute} == {"axis": 0, "block_size": 64} for n in dq)


def layernorm_input_types(folder) -> list[tuple[int, int]]:
    """(data input type, gain type) of every LayerNormalization in the exported graph, from ONNX's type inference."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(folder / MODEL_FILE), load_external_data=False))
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return [(types[n.input[0]], types[n.input[1]]) for n in model.graph.node if n.op_type == "LayerNormalization"]


def test_the_tensorrt_target_normalizes_fp16_graphs_in_fp32(tmp_path):
    """A strongly typed TensorRT network may normalize an fp16 input in fp16 (DeepNorm's hidden values overflow its
    sum of squares): for --target tensorrt every LayerNormalization takes fp32 between casts; ORT's form is kept."""
    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    export_onnx(DEFAULT_MODEL, tmp_path / "trt", dtype=torch.float16, target=QuantTarget.tensorrt, max_seq=64)
    export_onnx(DEFAULT_MODEL, tmp_path / "ort", dtype=torch.float16, max_seq=64)
    trt_norms, ort_norms = layernorm_input_types(tmp_path / "trt"), layernorm_input_types(tmp_path / "ort")
    assert len(trt_norms) == len(ort_norms) == 2 * 4 + 1  # two per layer and the final one
    assert set(trt_norms) == {(float32, float32)} and set(ort_norms) == {(float16, float16)}
    model = onnx.load(str(tmp_path / "trt" / MODEL_FILE), load_external_data=False)
    consumers = {i: n for n in model.graph.node for i in n.input}
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert all(consumers[n.output[0]].op_type == "Cast" for n in norms)  # back to fp16 after each
    report = verify_export(str(tmp_path / "trt"), DEFAULT_MODEL)  # same numbers as the engine in ONNX Runtime
    assert report.passed, report.describe()


def layernorm_graph(folder, target: QuantTarget, x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor):
    """A graph of one ``DecoderGraph.layernorm`` (GLM-130B's config) for ``target``, written to ``folder``."""
    _, config = preset_family("glm-130b")
    g = GraphBuilder(folder / f"{target.value}.onnx.data", OPSET)
    graph = DecoderGraph(g, config, torch.float16, 8, QuantEmit(target))
    g.add_input("x", torch.float16, list(x.shape))
    g.add_output("y", torch.float16, list(x.shape), graph.layernorm("x", "ln", gain, bias))
    g.finish(folder / f"{target.value}.onnx", "ln", "test", {})
    return onnx.load(str(folder / f"{target.value}.onnx"))


def test_deepnorm_sized_fp16_values_do_not_overflow_the_tensorrt_layernorm(tmp_path):
    """Hidden values of a few tens over GLM-130B's 12288 columns (DeepNorm's residual scales by alpha ~11.8) have a
    sum of squares far above fp16's 65504. The TensorRT form normalizes them in fp32: exact to fp16 rounding under
    ONNX Runtime, and under ONNX's reference evaluator, which, like a strongly typed TensorRT network, computes a
    node in its input's type, so the plain fp16 node overflows there while the TensorRT form does not."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'glm-engine[onnx]')")
    from onnx.reference import ReferenceEvaluator

    gen = torch.Generator().manual_seed(0)
    width = 12288
    x = (4 + 30 * torch.randn(2, 3, width, generator=gen)).half()
    gain, bias = (1 + 0.2 * torch.randn(width, generator=gen)).half(), (0.1 * torch.randn(width, generator=gen)).half()
    assert (x.float() ** 2).sum(-1).min() > 100 * torch.finfo(torch.float16).max
    expected = torch.nn.functional.layer_norm(x.double(), (width,), gain.double(), bias.double(), 1e-5)
    unused = {"input_ids": np.zeros((1, 1), np.int64), "position_ids": np.zeros((1, 1), np.int64)}
    unused |= {"attention_mask": np.zeros((1, 1, 1, 1), bool), "logits_to_keep": np.zeros(1, np.int64)}
    feeds = {"x": x.numpy(), **unused}
    errors = {}
    for target in (QuantTarget.tensorrt, QuantTarget.ort):
        model = layernorm_graph(tmp_path, target, x, gain, bias)
        session = ort.InferenceSession(str(tmp_path / f"{target.value}.onnx"), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        (by_ort,) = session.run(None, {k: v for k, v in feeds.items() if k in names})
        with np.errstate(over="ignore", invalid="ignore"):
            (by_reference,) = ReferenceEvaluator(model).run(None, feeds)
        errors[target] = [np.nan_to_num(np.abs(y - expected.numpy()), nan=np.inf).max() for y in (by_ort, by_reference)]
    fp16_step = 2.0**-10 * expected.abs().max().item()  # fp16's spacing at the largest output
    assert max(errors[QuantTarget.tensorrt]) < fp16_step
    assert errors[QuantTarget.ort][0] < fp16_step  # ONNX Runtime follows stash_type (fp32 statistics)
    assert errors[QuantTarget.ort][1] > 1.0  # computed in fp16 the sum of squares overflows


def test_cli_says_precisely_why_an_engine_cannot_be_built_here(trt_export, tmp_path):
    if TRT_MISSING is None:
        pytest.skip("TensorRT is installed here: the build test below runs instead")
    result = CliRunner().invoke(
        app, ["export", "tensorrt", "--onnx", str(trt_export), "--output", str(tmp_path / "e"), "--max-seq", "128"]
    )
    assert result.exit_code == 1 and "tensorrt" in result.output and "not installed" in result.output
    assert not (tmp_path / "e").exists()


def test_a_cached_engine_is_hard_linked_into_the_output_or_copied_where_links_fail(tmp_path, monkeypatch):
    from glm_engine.backends.tensorrt import build

    cached = tmp_path / "k.engine"
    cached.write_bytes(b"engine")
    assert (
        build.place_engine(cached, tmp_path / "linked") and (tmp_path / "linked").stat().st_ino == cached.stat().st_ino
    )

    def no_links(*args):
        raise OSError("cross-device link")

    monkeypatch.setattr(build.os, "link", no_links)
    assert not build.place_engine(cached, tmp_path / "copied")
    assert (tmp_path / "copied").read_bytes() == b"engine"


def test_an_export_for_onnxruntime_is_refused_before_touching_tensorrt(tmp_path):
    """MatMulNBits (--target ort) is an ONNX Runtime contrib op TensorRT cannot parse: say to re-export."""
    export_onnx(DEFAULT_MODEL, tmp_path / "ort", quant=QuantSpec(4, None), max_seq=64)
    with pytest.raises(InputError, match=r"re-export it with .*--target tensorrt"):
        build_engine(tmp_path / "ort", tmp_path / "e", Limits(1, 64, 16), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "e").exists() and not (tmp_path / "cache").exists()


@pytest.mark.skipif(TRT_MISSING is not None, reason=f"TensorRT build/run: {TRT_MISSING}")
def test_engine_builds_once_then_comes_from_the_cache_and_matches_onnxruntime(tmp_path):
    from glm_engine.backends.onnxruntime.backend import OnnxRuntimeBackend
    from glm_engine.backends.tensorrt.backend import TensorRTBackend
    from glm_engine.export.verify import compare_runners

    onnx_dir = tmp_path / "fp16"
    export_onnx(DEFAULT_MODEL, onnx_dir, dtype=torch.float16, target=QuantTarget.tensorrt, max_seq=64)
    limits = Limits(2, 64, 16)
    first = build_engine(onnx_dir, tmp_path / "e1", limits, cache_dir=tmp_path / "cache")
    second = build_engine(onnx_dir, tmp_path / "e2", limits, cache_dir=tmp_path / "cache")
    assert not first.cached and second.cached and first.key == second.key
    meta = json.loads((tmp_path / "e1" / "genai_config.json").read_text())
    assert meta["tensorrt"]["limits"] == dataclasses.asdict(limits)
    trt_runner = TensorRTBackend().load_runner(str(tmp_path / "e1"))
    ort_runner = OnnxRuntimeBackend().load_runner(str(onnx_dir))
    report = compare_runners(ort_runner, trt_runner, steps=8, threshold=1e-3)
    assert report.passed, report.describe()
