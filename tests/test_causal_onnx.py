"""ChatGLM2/3, GLM-4 and GLM-4-0414 in ONNX: RMSNorm, SwiGLU, grouped-query attention with a grouped KV cache, partial
interleaved rotary and branch norms, exported, run in onnxruntime and compared with the CPU backend (fp32 and
quantized), the KV cache's grouped shapes in the graph, genai_config.json and TensorRT's plans, and the tokenizer's
files carried into the folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'glm-engine[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'glm-engine[onnx]')")

from onnx.reference import ReferenceEvaluator  # noqa: E402

from glm_engine.backends.onnxruntime.backend import OnnxRuntimeBackend  # noqa: E402
from glm_engine.backends.registry import get_backend, op_table_for  # noqa: E402
from glm_engine.backends.tensorrt.plan import GraphIO, Limits, binding_plan, plan_profiles  # noqa: E402
from glm_engine.engine import load  # noqa: E402
from glm_engine.errors import TokenizerError  # noqa: E402
from glm_engine.export.decoder_onnx import DecoderGraph, QuantEmit  # noqa: E402
from glm_engine.export.onnx_builder import GraphBuilder  # noqa: E402
from glm_engine.export.onnx_export import export_onnx, export_state_dict  # noqa: E402
from glm_engine.export.verify import (  # noqa: E402
    EXACT_QUANTIZED_NMSE_THRESHOLD,
    compare_runners,
    nmse,
    verify_export,
)
from glm_engine.exported import (  # noqa: E402
    GENAI_CONFIG_FILE,
    MODEL_FILE,
    OPSET,
    ExportedModel,
    QuantTarget,
    genai_config,
    read_exported,
    tokenizer_files,
)
from glm_engine.model.chatglm2.family import ChatGLM2Family  # noqa: E402
from glm_engine.model.glm4_hf.family import GlmHFFamily  # noqa: E402
from glm_engine.model.graph import DecoderModel  # noqa: E402
from glm_engine.model.registry import preset_family  # noqa: E402
from glm_engine.ops.torch_ops import TorchOps  # noqa: E402
from glm_engine.quant.reference import quantize  # noqa: E402
from glm_engine.quant.spec import QuantSpec  # noqa: E402
from glm_engine.tokenizer import BUILTIN_TOKENIZER_PATH  # noqa: E402

# Measured 1e-13 for every preset against the exact fp32 reference and the CPU backend (summation order only).
FP32_NMSE = 1e-10
MAX_SEQ = 64


@pytest.fixture(scope="module")
def chatglm3_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("causal") / "chatglm3"
    export_onnx("chatglm3-tiny", folder, max_seq=MAX_SEQ)
    return folder


def assert_close(report, bound: float) -> None:
    for comparison in (report, report.also):
        worst = max(comparison.prefill_nmse, *comparison.decode_nmse)
        assert worst <= bound and comparison.tokens_match, report.describe()
    assert report.passed and len(report.decode_nmse) == 7


@pytest.mark.parametrize("preset", ["glm4-tiny", "glm4-hf-tiny", "glm4-0414-tiny"])
def test_fp32_exports_match_the_cpu_backend_over_prefill_and_cached_steps(tmp_path, preset):
    """Remote GLM-4 (gain after the rounding), native GLM-4 (before it) and GLM-4-0414 (branch norms)."""
    export_onnx(preset, tmp_path / "onnx", max_seq=MAX_SEQ)
    assert_close(verify_export(str(tmp_path / "onnx"), preset), FP32_NMSE)


def test_chatglm3_export_matches_the_cpu_backend(chatglm3_export):
    assert_close(verify_export(str(chatglm3_export), "chatglm3-tiny"), FP32_NMSE)


def test_fp16_export_of_glm4_0414_verifies(tmp_path):
    export_onnx("glm4-0414-tiny", tmp_path / "fp16", dtype=torch.float16, max_seq=MAX_SEQ)
    report = verify_export(str(tmp_path / "fp16"), "glm4-0414-tiny")
    assert report.passed, report.describe()


def test_the_kv_cache_is_grouped_in_the_graph_and_in_genai_config(chatglm3_export):
    _, config = preset_family("chatglm3-tiny")
    groups, d = config.num_kv_heads, config.head_dim
    assert (config.num_attention_heads, groups) == (4, 2)
    onnx.checker.check_model(str(chatglm3_export / MODEL_FILE), full_check=True)
    graph = onnx.load(str(chatglm3_export / MODEL_FILE), load_external_data=False).graph

    def dims(values, name):
        value = next(v for v in values if v.name == name)
        return [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]

    assert dims(graph.input, "past_key_values.1.value") == ["batch_size", groups, "past_sequence_length", d]
    assert dims(graph.output, "present.0.key") == ["batch_size", groups, "total_sequence_length", d]
    assert dims(graph.input, "position_ids") == ["batch_size", "sequence_length"]
    weights = {t.name for t in graph.initializer}
    assert "transformer.layers.0.attention.query_key_value.bias" in weights  # add_qkv_bias
    assert not any(name.endswith(("dense.bias", "dense_h_to_4h.bias", "dense_4h_to_h.bias")) for name in weights)
    assert "transformer.output_layer.weight" in weights  # untied: its own matrix
    decoder = json.loads((chatglm3_export / GENAI_CONFIG_FILE).read_text())["model"]["decoder"]
    assert (decoder["num_attention_heads"], decoder["num_key_value_heads"]) == (4, groups)
    assert decoder["shapes"]["past_key_values"] == ["batch_size", groups, "past_sequence_length", d]
    assert decoder["shapes"]["position_ids"] == ["batch_size", "sequence_length"]
    assert read_exported(chatglm3_export).config == config.with_overrides(max_sequence_length=MAX_SEQ)


@pytest.mark.parametrize(
    ("preset", "quant", "target", "op"),
    [
        ("chatglm3-tiny", QuantSpec(4, None), QuantTarget.ort, "MatMulNBits"),
        ("glm4-0414-tiny", QuantSpec(4, 32), QuantTarget.ort, "MatMulNBits"),
        ("glm4-tiny", QuantSpec(8, None), QuantTarget.tensorrt, "DequantizeLinear"),
    ],
    ids=["int4-rowwise", "int4-g32", "int8-tensorrt"],
)
def test_quantized_exports_verify_with_every_linear_quantized(tmp_path, preset, quant, target, op):
    export_onnx(preset, tmp_path / "q", max_seq=MAX_SEQ, quant=quant, target=target)
    report = verify_export(str(tmp_path / "q"), preset)
    assert report.passed, report.describe()
    _, config = preset_family(preset)
    nodes = [n for n in onnx.load(str(tmp_path / "q" / MODEL_FILE), load_external_data=False).graph.node]
    assert sum(n.op_type == op for n in nodes) == 4 * config.num_layers
    if op == "MatMulNBits":  # the SwiGLU up projection is one [gate | up] matrix of 2 * inner rows
        widths = sorted({next(a.i for a in n.attribute if a.name == "N") for n in nodes if n.op_type == op})
        heads, groups, d = config.num_attention_heads, config.num_kv_heads, config.head_dim
        assert widths == sorted({config.hidden_size, (heads + 2 * groups) * d, 2 * config.inner_hidden_size})


def test_an_int4_release_exports_quantized_as_stored(tmp_path):
    """``chatglm2-6b-int4``'s form (the four linears as INT4 with a per-row scale) keeps its integers and scales."""
    family, config = preset_family("chatglm2-tiny")
    config = config.with_overrides(quantization_bit=4)
    state = family.random_state_dict(config, 1, torch.float16)
    for key in family.weight_layout(config).quantizable_keys:
        state[key], state[key + "_scale"] = quantize(state[key], 4)
    assert export_state_dict(state, config, tmp_path / "int4", max_seq=MAX_SEQ).quant == QuantSpec(4, None)
    reference = DecoderModel.from_state_dict(config, state, TorchOps(torch.device("cpu"), torch.float32))
    runner = OnnxRuntimeBackend().load_runner(str(tmp_path / "int4"))
    report = compare_runners(reference, runner, 4, EXACT_QUANTIZED_NMSE_THRESHOLD, "TorchOps in fp32")
    assert report.passed, report.describe()


def test_an_export_runs_through_load_on_onnxruntime_with_a_grouped_cache(tmp_path):
    """``export_state_dict`` of GLM-4-0414 weights, loaded by ``glm_engine.load`` on onnxruntime: prefill and cached
    steps against the same weights on the CPU backend; each layer's cache holds the key/value groups."""
    _, config = preset_family("glm4-0414-tiny")
    state = GlmHFFamily().random_state_dict(config, 3)
    model = DecoderModel.from_state_dict(config, state, op_table_for(get_backend("cpu"), torch.float32))
    export_state_dict(state, config, tmp_path / "onnx", max_seq=MAX_SEQ)
    assert all(
        (tmp_path / "onnx" / name).is_file()
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
    )
    runner = load(str(tmp_path / "onnx"), backend="onnxruntime").runner
    ids = torch.randint(3, 3990, (2, 9), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(9).expand(2, 9)
    blocked = torch.ones(9, 9, dtype=torch.bool).triu(1)[None, None].expand(2, 1, 9, 9)
    caches = [model.new_cache(2, 9), runner.new_cache(2, 9)]
    for start, stop in ((0, 6), (6, 7), (7, 8), (8, 9)):
        args = (ids[:, start:stop], positions[:, start:stop], blocked[:, :, start:stop, :stop])
        with torch.inference_mode():
            want = model.forward(*args, caches[0])
        assert nmse(runner.forward(*args, caches[1]), want) <= FP32_NMSE
        assert all(v.shape() == [2, config.num_kv_heads, stop, config.head_dim] for v in caches[1].values)


def test_the_tokenizers_files_travel_with_the_export_and_must_load_from_it(tmp_path, chatglm3_export, monkeypatch):
    """ChatGLM3's SentencePiece model travels under its release name; GLM-4's rank file with its tokenizer_config
    (chat template, added tokens); a tokenizer that forgets a file leaves no export behind."""
    described = json.loads((chatglm3_export / GENAI_CONFIG_FILE).read_text())
    assert tokenizer_files(described) == ["tokenizer.model"] and described["tokenizer"] == "tokenizer.model"
    assert (chatglm3_export / "tokenizer.model").read_bytes() == BUILTIN_TOKENIZER_PATH.read_bytes()
    export_onnx("glm4-tiny", tmp_path / "glm4", max_seq=MAX_SEQ)
    assert tokenizer_files(json.loads((tmp_path / "glm4" / GENAI_CONFIG_FILE).read_text())) == [
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    engine = load(str(tmp_path / "glm4"), backend="onnxruntime")
    assert engine.tokenizer.encode("<|user|>hi")[:3] == [4002, 4004, 4007]  # [gMASK] <sop> <|user|>

    original = ChatGLM2Family.load_tokenizer

    def forgetful(family, config, path, folder, random):  # a tokenizer that forgets its rank file
        tokenizer = original(family, config, path, folder, random)
        tokenizer.files = {"tokenizer_config.json": tokenizer.files["tokenizer_config.json"]}
        return tokenizer

    monkeypatch.setattr(ChatGLM2Family, "load_tokenizer", forgetful)
    with pytest.raises(TokenizerError, match=r"do not load from the exported folder"):
        export_onnx("glm4-tiny", tmp_path / "incomplete", max_seq=MAX_SEQ)
    assert not (tmp_path / "incomplete").exists()


def test_tensorrt_plans_bind_the_grouped_cache_and_one_position_row():
    _, config = preset_family("glm4-tiny")
    exported = ExportedModel(Path("x"), config, torch.float16, 128, None, QuantTarget.ort, 1, "ab")
    io = GraphIO.from_genai_config(genai_config(exported, "test"))
    assert (io.num_kv_heads, io.head_size, io.position_rows) == (config.num_kv_heads, config.head_dim, 1)
    limits = Limits(max_batch=3, max_seq=128, opt_seq=32)
    prefill, decode = plan_profiles(io, limits)
    assert prefill.shapes["position_ids"] == ((1, 1), (1, 32), (3, 128))
    assert decode.shapes["past_key_values.1.key"] == ((1, 2, 0, 16), (1, 2, 32, 16), (3, 2, 127, 16))
    capacity = {b.name: b.capacity for b in binding_plan(io, limits)}
    assert capacity["present.0.value"] == capacity["past_key_values.0.key"] == 3 * 2 * 128 * 16
    assert capacity["position_ids"] == 3 * 128


@pytest.mark.parametrize("preset", ["chatglm3-tiny", "glm4-hf-tiny"])
def test_fp16_rmsnorm_and_swiglu_round_as_the_contract_says(tmp_path, preset):
    """In fp16 the graph's RMSNorm applies the gain before the one rounding (remote code) or after it (native), and
    SwiGLU rounds silu once: checked with ONNX's reference evaluator, since ONNX Runtime's CPU provider computes
    fp16 ops in fp32 and drops the casts between them (so it cannot tell the two roundings apart)."""
    _, config = preset_family(preset)
    g = GraphBuilder(tmp_path / "parts.onnx.data", OPSET)
    graph = DecoderGraph(g, config, torch.float16, 8, QuantEmit())
    gen = torch.Generator().manual_seed(0)
    gain = (1 + 0.2 * torch.randn(config.hidden_size, generator=gen)).half()
    x = (3 * torch.randn(4, 16, config.hidden_size, generator=gen)).half()
    h = (3 * torch.randn(4, 16, 2 * config.inner_hidden_size, generator=gen)).half()
    g.add_input("x", torch.float16, list(x.shape))
    g.add_input("h", torch.float16, list(h.shape))
    g.add_output("normed", torch.float16, list(x.shape), graph.rmsnorm("x", "norm", gain))
    g.add_output("swiglu", torch.float16, [4, 16, config.inner_hidden_size], graph.activation("h"))
    g.finish(tmp_path / "parts.onnx", "parts", "test", {})
    unused = {"input_ids": np.zeros((1, 1), np.int64), "position_ids": np.zeros((1, 1), np.int64)}
    unused |= {"attention_mask": np.zeros((1, 1, 1, 1), bool), "logits_to_keep": np.zeros(1, np.int64)}
    evaluator = ReferenceEvaluator(onnx.load(str(tmp_path / "parts.onnx")))
    normed, swiglu = (torch.from_numpy(a) for a in evaluator.run(None, {"x": x.numpy(), "h": h.numpy(), **unused}))
    ops, eps, ours = TorchOps(torch.device("cpu"), torch.float16), config.layernorm_epsilon, config.norm_weight_in_fp32
    assert torch.equal(normed, ops.rmsnorm(x, gain, eps, ours))
    assert (normed != ops.rmsnorm(x, gain, eps, not ours)).float().mean() > 0.1  # the other rounding is far off
    assert (swiglu != ops.swiglu(h)).float().mean() < 1e-3  # numpy's exp and torch's differ in the last bit
    gate, up = h.chunk(2, -1)
    assert (swiglu != torch.sigmoid(gate) * gate * up).float().mean() > 0.1  # silu rounded once, not twice
