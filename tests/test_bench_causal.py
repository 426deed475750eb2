"""``glm-engine bench`` on the causal families (ChatGLM2/3 and GLM-4 in the remote-code layout, GLM-4 native):
reducible random shapes with grouped-query constraints, KV bytes per token over the key/value heads a rank holds,
causal workloads, and the transformers baseline's plan for native and remote-code folders."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from glm_engine.bench.baseline import plan_baseline
from glm_engine.bench.hf_worker import HFRunner, _streamed_bytes, is_causal
from glm_engine.bench.measure import measure
from glm_engine.bench.models import Shape, kv_bytes_per_token, resolve_model
from glm_engine.bench.roofline import GB
from glm_engine.bench.rows import OK, kv_bytes_per_step
from glm_engine.bench.spec import Kind, Point, QuantChoice, TestSpec
from glm_engine.bench.workload import build_workload
from glm_engine.cli.main import app
from glm_engine.errors import InputError, ParallelError
from glm_engine.model.chatglm2.family import ChatGLM2Family
from glm_engine.model.glm4_hf.family import GlmHFFamily
from glm_engine.model.registry import family_named

CHATGLM2, CHATGLM = family_named("chatglm2"), family_named("chatglm")
FP32 = 4


@pytest.fixture(autouse=True)
def no_chat_tokenizer(monkeypatch):
    """bench never tokenizes (its ids are drawn from the text range), so the causal families' tokenizers are stubbed:
    the folders made here carry none, and loading one is not what these tests are about."""

    def stub(self, config, path, folder, random):
        return SimpleNamespace(vocab_size=config.vocab_size, eos_id=(*config.eos_token_ids, 0)[0])

    monkeypatch.setattr(ChatGLM2Family, "load_tokenizer", stub)
    monkeypatch.setattr(GlmHFFamily, "load_tokenizer", stub)


@pytest.fixture(autouse=True)
def small_bandwidth_probe(monkeypatch):
    from glm_engine.bench import roofline

    monkeypatch.setattr(roofline, "MIN_CPU_PROBE_BYTES", 2**20)
    monkeypatch.setattr(roofline, "last_level_cache_bytes", lambda device: None)


# --- shapes ---------------------------------------------------------------------------------------------------------


def test_a_release_shape_reduces_in_depth_and_width_keeping_its_head_width_and_key_value_groups():
    source = resolve_model("random:chatglm3-6b", Shape(layers=2, hidden=512))
    c = source.config
    assert source.family is CHATGLM2 and source.random
    # heads follow the preset's 128-wide heads, the two groups stay, the SwiGLU width keeps its ratio to hidden
    assert (c.num_layers, c.hidden_size, c.num_attention_heads, c.num_kv_heads, c.kv_channels) == (2, 512, 4, 2, 128)
    assert c.inner_hidden_size == 13696 * 512 // 4096
    assert "4 heads in 2 key/value groups of 128 dims" in source.description


def test_kv_heads_reshape_the_groups_and_head_width_need_not_be_hidden_over_heads():
    c = resolve_model("random:glm-4-9b-chat-hf", Shape(layers=1, heads=8, kv_heads=4)).config
    assert (c.hidden_size, c.num_attention_heads, c.num_kv_heads, c.kv_channels) == (4096, 8, 4, 128)
    assert c.head_dim * c.num_attention_heads != c.hidden_size  # a free head width, as GLM-4's kv_channels is


@pytest.mark.parametrize(
    ("model", "shape", "message"),
    [
        ("random:chatglm3-6b", Shape(heads=7), "2 key/value groups must divide the 7 attention heads"),
        ("random:glm-4-9b", Shape(kv_heads=3), "--kv-heads 3 must divide the 32 attention heads"),
        ("random:chatglm-6b", Shape(kv_heads=2), "has one key/value head per query head"),
        ("random:glm-4-9b", Shape(hidden=4000), "not a multiple of random:glm-4-9b's head width 128"),
        ("random:chatglm-6b", Shape(hidden=512, heads=3), "num_attention_heads (3) must divide hidden_size (512)"),
    ],
)
def test_shapes_that_break_a_grouped_query_or_head_constraint_are_input_errors(model, shape, message):
    with pytest.raises(InputError) as raised:
        resolve_model(model, shape)
    assert message in str(raised.value)


def test_a_tp_degree_the_groups_cannot_take_is_refused_before_anything_runs():
    result = CliRunner().invoke(app, ["bench", "--model", "random:chatglm3-tiny", "--tp", "3", "--no-baseline"])
    assert result.exit_code != 0
    assert "tensor-parallel degree 3 does not fit" in result.output and "valid degrees: 1, 2, 4" in result.output
    with pytest.raises(ParallelError):
        from glm_engine.bench.runner import check_plan

        source = resolve_model("random:chatglm3-tiny")
        check_plan(source, [Point("cpu", "fp32", QuantChoice(), 3, 1, 0, TestSpec(Kind.GENERATE, 0, 2))])


# --- KV bytes -------------------------------------------------------------------------------------------------------


def test_kv_bytes_per_token_count_the_key_value_groups_not_the_query_heads():
    loaded = resolve_model("random:chatglm3-tiny").load("cpu", "fp32", QuantChoice())
    c = loaded.runner.config
    assert (c.num_layers, c.num_attention_heads, c.num_kv_heads, c.kv_channels) == (2, 4, 2, 16)
    assert loaded.kv_bytes_per_token == 2 * 2 * 2 * 16 * FP32  # K and V, 2 layers, 2 groups of 16 dims
    assert loaded.kv_bytes_per_token == loaded.runner.new_cache(1, 1).storage.nbytes  # what the cache holds


def test_a_tensor_parallel_rank_counts_the_groups_it_holds():
    config = SimpleNamespace(num_layers=3, num_attention_heads=8, head_dim=128)
    split = SimpleNamespace(config=config, local_heads=4, local_kv_heads=1, dtype=torch.bfloat16)  # 2 groups, TP=2
    replicated = SimpleNamespace(config=config, local_heads=2, local_kv_heads=1, dtype=torch.bfloat16)  # TP=4
    one_per_head = SimpleNamespace(config=config, local_heads=8, dtype=torch.float32)  # a runner without groups
    assert kv_bytes_per_token(split) == kv_bytes_per_token(replicated) == 2 * 3 * 1 * 128 * 2
    assert kv_bytes_per_token(one_per_head) == 2 * 3 * 8 * 128 * 4


def test_a_causal_bench_row_reports_kv_gbps_from_the_groups(tmp_path):
    args = ["bench", "--model", "random:glm4-tiny", "--kv-heads", "1", "-t", "tg3", "-r", "1", "--warmup", "0"]
    result = CliRunner().invoke(app, [*args, "--bandwidth-gib", "0", "--no-baseline", "-o", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "4 heads in 1 key/value groups of 16 dims" in report["model"]["description"]
    (row,) = report["rows"]
    assert row["status"] == OK
    point = Point("cpu", "fp32", QuantChoice(), 1, 1, 0, TestSpec(Kind.GENERATE, 0, 3))
    assert row["kv_gb"] == pytest.approx(kv_bytes_per_step(point, 2 * 2 * 1 * 16 * FP32) / GB)


# --- workloads and the transformers side ----------------------------------------------------------------------------


def test_causal_workloads_need_no_mask_and_chatglm_6b_keeps_its_own():
    glm4 = CHATGLM2.presets()["glm4-tiny"]
    work = build_workload(CHATGLM2, glm4, 2, 5, 8, 100, 0)
    assert work.positions.shape == (2, 8) and work.positions[1].tolist() == list(range(8))
    assert is_causal(work)
    assert not is_causal(build_workload(CHATGLM, CHATGLM.presets()["chatglm-tiny"], 1, 4, 6, 100, 0))


class _MaskRecorder:
    def __init__(self) -> None:
        self.masks: list[object] = []

    def __call__(self, input_ids, position_ids, attention_mask, past_key_values, use_cache, return_dict):
        self.masks.append(attention_mask)
        held = (past_key_values or 0) + input_ids.shape[1]
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 8), past_key_values=held)


def test_the_baseline_runner_leaves_the_mask_out_of_a_causal_workload():
    test = TestSpec(Kind.COMBINED, 4, 2)
    point = Point("transformers", "fp32", QuantChoice(), 1, 1, 0, test)
    work = build_workload(CHATGLM2, CHATGLM2.presets()["chatglm3-tiny"], 1, 4, 6, 100, 0)
    model = _MaskRecorder()
    runner = HFRunner(model, torch.device("cpu"), pass_mask=not is_causal(work))
    measure(runner, work, point, repetitions=1, warmup=0, make_stepper=lambda: runner)
    assert model.masks == [None, None, None]  # the prompt and two steps
    kept = _MaskRecorder()
    runner = HFRunner(kept, torch.device("cpu"))
    measure(runner, work, point, repetitions=1, warmup=0, make_stepper=lambda: runner)
    assert all(isinstance(mask, torch.Tensor) for mask in kept.masks)


class _RemoteLike(torch.nn.Module):
    """ChatGLM2-style remote code: the output layer lives at ``transformer.output_layer`` and
    ``get_output_embeddings`` returns None."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = torch.nn.Module()
        self.transformer.embedding = torch.nn.Embedding(100, 8)
        self.transformer.layer = torch.nn.Linear(8, 8, bias=False)
        self.transformer.output_layer = torch.nn.Linear(8, 100, bias=False)

    def get_input_embeddings(self):
        return self.transformer.embedding

    def get_output_embeddings(self):
        return None


def test_the_baseline_counts_a_separate_output_layer_and_leaves_the_embedding_table_out():
    assert _streamed_bytes(_RemoteLike()) == (8 * 8 + 100 * 8) * FP32


def _native_folder(tmp_path: Path) -> Path:
    from tests.glm4_reference import make_native_folder

    return make_native_folder(tmp_path / "native", "glm")


def test_a_native_folder_takes_no_remote_code(tmp_path):
    refused = plan_baseline(resolve_model(str(_native_folder(tmp_path))), None, tmp_path)
    assert "transformers runs with its own class: leave --baseline-code out" in refused.skipped


def test_a_native_model_type_this_transformers_lacks_is_skipped_quoting_its_error(tmp_path, monkeypatch):
    folder = _native_folder(tmp_path)
    python = tmp_path / "python"  # an interpreter whose transformers answers the probe as an old release would
    python.write_text(
        '#!/bin/sh\necho \'{"versions": "transformers 4.40.2, torch 2.13.0", "problem": "ValueError: '
        "The checkpoint you are trying to load has model type glm\"}'\n"
    )
    python.chmod(0o755)
    plan = plan_baseline(resolve_model(str(folder)), str(python), None)
    assert plan.skipped.startswith(f"transformers 4.40.2, torch 2.13.0 in {python} cannot run {folder}")
    assert "model type glm" in plan.skipped and "pip install 'transformers>=4.51'" in plan.skipped


def _remote_folder(tmp_path: Path, release: str = "chatglm3") -> Path:
    from tests.glm4_reference import make_native_folder, make_remote_folder

    native = make_native_folder(tmp_path / f"native-{release}", "glm")
    return make_remote_folder(native, tmp_path / release, release)


CONFIG_CODE = """from transformers import PretrainedConfig


class ChatGLMConfig(PretrainedConfig):
    model_type = "chatglm"
"""


MODELING_CODE = """import torch


class ChatGLMForConditionalGeneration(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(config.num_layers))
"""
BROKEN_AT_CONSTRUCTION = MODELING_CODE.replace("config.num_layers", "config.max_length")


def _code(tmp_path: Path, modeling: str) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "configuration_chatglm.py").write_text(CONFIG_CODE)
    (code / "modeling_chatglm.py").write_text(modeling)
    return code


def test_a_remote_code_folder_needs_its_code_and_the_probe_quotes_what_fails_to_import(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    source = resolve_model(str(_remote_folder(tmp_path)))
    missing = plan_baseline(source, None, None)
    assert "has no modeling code" in missing.skipped
    assert "modeling_chatglm.py and configuration_chatglm.py" in missing.skipped
    broken = _code(tmp_path, "from transformers.generation.utils import NoSuchName\n")
    plan = plan_baseline(source, None, broken)
    assert "cannot run" in plan.skipped and "NoSuchName" in plan.skipped
    assert "pip install 'transformers>=4.44,<4.49'" in plan.skipped and plan.remote_code


def test_remote_code_that_breaks_when_the_model_is_built_is_caught_by_the_probe(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    source = resolve_model(str(_remote_folder(tmp_path)))
    plan = plan_baseline(source, None, _code(tmp_path, BROKEN_AT_CONSTRUCTION))
    assert "AttributeError" in plan.skipped and "max_length" in plan.skipped


def test_a_remote_code_folder_whose_class_resolves_is_planned_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    source = resolve_model(str(_remote_folder(tmp_path)))
    code = _code(tmp_path, MODELING_CODE)
    plan = plan_baseline(source, None, code)
    assert plan.skipped == "" and plan.remote_code and plan.code == code
    assert plan.workload["family"] == "chatglm2" and plan.workload["config"]["release"] == "chatglm3"


def test_the_native_baseline_runs_side_by_side_on_the_same_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    folder = _native_folder(tmp_path)
    args = ["bench", "--model", str(folder), "-r", "1", "--warmup", "0", "-t", "pg4,2", "--bandwidth-gib", "0"]
    result = CliRunner().invoke(app, [*args, "-o", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = report["rows"]
    # AutoModelForCausalLM, not AutoModel (whose GlmModel has no lm_head and would give no logits)
    assert [(r["engine"], r["status"]) for r in rows] == [("cpu", OK), ("transformers", OK)], rows
    assert report["baseline"].startswith("transformers ")
    assert rows[0]["vs_baseline"] == pytest.approx(rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"])
    # both count the cached keys and values of the same 2 groups of 16 dims in 3 layers
    assert rows[0]["kv_gb"] == pytest.approx(rows[1]["kv_gb"])
