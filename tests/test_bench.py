"""``glm-engine bench``: spec parsing, the product of parameter lists, the statistics and roofline arithmetic, the
reports (md/csv/json, ratio columns), Ctrl-C keeping finished rows, the plot, the transformers baseline, and the
command end to end on the built-in demo model."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch
from typer.testing import CliRunner

from glm_engine.bench import runner as runner_module
from glm_engine.bench.baseline import plan_baseline
from glm_engine.bench.measure import Measurement, Sample, measure
from glm_engine.bench.models import Shape, resolve_model
from glm_engine.bench.report import ReportFormat, render_report
from glm_engine.bench.roofline import achieved_gbps, roofline_share
from glm_engine.bench.rows import OK, Row, add_ratios, row_from_measurement, skipped_row
from glm_engine.bench.spec import (
    Kind,
    Point,
    QuantChoice,
    TestSpec,
    expand,
    parse_ints,
    parse_quant,
    parse_tests,
    point_from_json,
    point_to_json,
)
from glm_engine.bench.stats import mean, median, percentile, stddev
from glm_engine.bench.workload import build_workload
from glm_engine.cli.main import app
from glm_engine.errors import InputError, MissingDependencyError
from glm_engine.model.chatglm.config import CHATGLM_PRESETS
from glm_engine.model.kv_cache import KVCache
from glm_engine.model.registry import family_named
from glm_engine.tokenizer import BUILTIN_TOKENIZER_PATH

GLM, CHATGLM = family_named("glm"), family_named("chatglm")
GLM_CONFIG, CHATGLM_CONFIG = GLM.presets()["glm-tiny"], CHATGLM.presets()["chatglm-tiny"]
PP8, TG4 = TestSpec(Kind.PREFILL, 8, 0), TestSpec(Kind.GENERATE, 0, 4)


# --- specs --------------------------------------------------------------------------------------------------------


def test_tests_parse_from_comma_lists_and_repeated_flags_with_pg_taking_the_next_number():
    tests = parse_tests(["pp512,tg128,pg512,128", "pg64:16", "tg1"])
    assert tests == [
        TestSpec(Kind.PREFILL, 512, 0),
        TestSpec(Kind.GENERATE, 0, 128),
        TestSpec(Kind.COMBINED, 512, 128),
        TestSpec(Kind.COMBINED, 64, 16),
        TestSpec(Kind.GENERATE, 0, 1),
    ]
    assert [t.name for t in tests[:3]] == ["pp512", "tg128", "pp512+tg128"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pp0", "at least 1"),
        ("tg0", "at least 1"),
        ("pg12", "needs a generation length too"),
        ("pg12,tg4", "needs a generation length too"),
        ("pg12,0", "must be an integer >= 1"),
        ("xx12", "unknown test"),
        ("pp", "unknown test"),
        ("", "no tests given"),
    ],
)
def test_bad_test_specs_are_refused_with_what_to_write(spec, message):
    with pytest.raises(InputError, match=message):
        parse_tests([spec])


def test_integer_lists_drop_duplicates_and_refuse_values_below_the_minimum():
    assert parse_ints(["1,2", "2", "4"], "--batch", 1) == [1, 2, 4]
    assert parse_ints(["0"], "--depth", 0) == [0]
    with pytest.raises(InputError, match="--batch takes integers >= 1"):
        parse_ints(["0"], "--batch", 1)
    with pytest.raises(InputError, match="--tp takes integers"):
        parse_ints(["two"], "--tp", 1)


def test_quant_lists_expand_without_duplicate_points_and_with_the_engines_rules():
    choices = parse_quant(["none,int8", "int4"], ["rowwise,groupwise"], ["32"], ["off,on"])
    assert [c.name for c in choices] == [
        "none",
        "int8-rowwise",
        "int8-rowwise+out",
        "int8-g32",
        "int8-g32+out",
        "int4-rowwise",
        "int4-rowwise+out",
        "int4-g32",
        "int4-g32+out",
    ]
    assert choices[3].load_args() == {
        "quant": "int8",
        "quant_scheme": "groupwise",
        "quant_group_size": 32,
        "quant_output": False,
    }
    assert parse_quant([], [], [], []) == [QuantChoice()]
    with pytest.raises(InputError, match="group size must be one of"):
        parse_quant(["int4"], ["groupwise"], ["48"], [])
    with pytest.raises(InputError, match="unknown quantization"):
        parse_quant(["int3"], [], [], [])


def test_the_plan_is_the_product_with_points_of_one_loaded_model_adjacent():
    quants = [QuantChoice(), QuantChoice(8)]
    points = expand(["cpu", "other"], ["fp32"], quants, [1, 2], [1, 4], [0, 16], [PP8, TG4])
    assert len(points) == 2 * 1 * 2 * 2 * 2 * 2 * 2
    keys = [p.load_key for p in points]
    assert len(set(keys)) == 2 * 2 * 2  # backend x quant x tp
    assert all(keys[i] == keys[i + 1] for i in range(len(keys) - 1) if i % 8 != 7)  # 8 points per loaded model
    assert points[0].backend == "cpu" and points[-1].backend == "other"
    assert points[1].label == "tg4 @ d0" and points[2].label == "pp8 @ d16"


def test_points_round_trip_through_json_for_ranks_and_the_baseline_interpreter():
    point = Point("cpu", "bf16", QuantChoice(4, 32, True), 2, 3, 16, TestSpec(Kind.COMBINED, 8, 4))
    assert point_from_json(json.loads(json.dumps(point_to_json(point)))) == point
    assert point.tokens_needed() == 16 + 8 + 4
    assert Point("cpu", "fp32", QuantChoice(), 1, 1, 0, TG4).tokens_needed() == 1 + 4  # one-token prompt


# --- statistics and roofline ----------------------------------------------------------------------------------------


def test_statistics_match_hand_computed_values():
    values = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
    assert mean(values) == 5.0
    assert stddev(values) == pytest.approx((32 / 7) ** 0.5)  # sample stddev: sum of squares 32 over n-1
    assert median(values) == 4.5
    assert percentile(values, 90) == pytest.approx(7.6)  # rank 0.9 * 7 = 6.3: 7 + 0.3 * (9 - 7)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 90) == pytest.approx(9.1)
    assert stddev([3.0]) == 0.0
    assert percentile([3.0], 90) == 3.0


def test_gbps_and_roofline_share_arithmetic():
    assert achieved_gbps(2_000_000_000, 0.1) == pytest.approx(20.0)  # 2 GB each step, 10 steps/s
    assert roofline_share(20.0, 80.0) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        achieved_gbps(1, 0.0)


@pytest.fixture(autouse=True)
def small_bandwidth_probe(monkeypatch):
    """Keep the bandwidth probe of command tests tiny: no last-level cache to size it against, no CPU minimum."""
    from glm_engine.bench import roofline

    monkeypatch.setattr(roofline, "MIN_CPU_PROBE_BYTES", 0)
    monkeypatch.setattr(roofline, "last_level_cache_bytes", lambda device: None)


def test_cache_sizes_are_read_from_sysfs_and_the_probe_is_sized_well_above_the_last_level(tmp_path, monkeypatch):
    from glm_engine.bench import roofline

    for index, (level, kind, size) in enumerate(
        [(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K"), (3, "Unified", "266240K")]
    ):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(f"{level}\n")
        (folder / "type").write_text(f"{kind}\n")
        (folder / "size").write_text(f"{size}\n")
    assert roofline.cpu_last_level_cache_bytes(tmp_path) == 266240 * 1024
    assert roofline.parse_size("32M") == 32 * 2**20 and roofline.parse_size("1 GiB") == 2**30
    assert roofline.parse_size("lots") is None
    monkeypatch.setattr(roofline, "MIN_CPU_PROBE_BYTES", 512 * 2**20)
    assert roofline.probe_bytes(0.05, 260 * 2**20, "cpu") == 8 * 260 * 2**20  # 8x the cache, not 0.05 GiB
    assert roofline.probe_bytes(0.05, None, "cpu") == 512 * 2**20  # the CPU minimum
    assert roofline.probe_bytes(1.0, 60 * 2**20, "cuda") == 2**30  # asked for more than 8x the L2
    assert roofline.probe_bytes(0.25, 60 * 2**20, "cuda") == 480 * 2**20


def test_the_ceiling_is_the_fastest_kernel_and_a_share_is_withheld_in_cache_and_flagged_above_one():
    from glm_engine.bench.roofline import ABOVE_ROOFLINE, IN_CACHE, best_kernel, share_or_note

    assert best_kernel({"sum fp32": 16.0, "copy (read + write)": 14.0, "gemv fp32": 24.0}) == ("gemv fp32", 24.0)
    assert share_or_note(10 * 2**20, 56.6, 20.0, 260 * 2**20) == (None, IN_CACHE)  # 10 MiB of weights in 260 MiB
    assert share_or_note(2**31, 10.0, 20.0, 260 * 2**20) == (pytest.approx(0.5), "")
    assert share_or_note(2**31, 30.0, 20.0, 260 * 2**20) == (pytest.approx(1.5), ABOVE_ROOFLINE)
    assert share_or_note(2**31, 10.0, 20.0, None) == (pytest.approx(0.5), "")  # cache unknown: a share
    point = Point("cpu", "fp32", QuantChoice(), 1, 1, 0, TG4)
    small = row_from_measurement("cpu", point, _measurement(), 10**6, 20.0, "d", cache_bytes=2**20)
    assert small.roofline_share is None and small.roofline_note == IN_CACHE and small.weight_gbps is not None
    big = row_from_measurement("cpu", point, _measurement(), 10**10, 20.0, "d", cache_bytes=2**20)
    text = render_report(META, [small, big], ReportFormat.md, "cpu", "transformers")
    assert "| n/a (in cache) |" in text and f"| {big.roofline_share:.0%} (!) |" in text
    assert "(!) marks a share above 100%" in text


def _measurement() -> Measurement:
    return Measurement(
        [Sample(0.5, [0.1, 0.1, 0.2, 0.2]), Sample(0.5, [0.1, 0.1, 0.1, 0.2])], 2**30, None, "host clock"
    )


def test_a_row_summarises_rates_latencies_and_bandwidth_from_the_samples():
    point = Point("cpu", "fp32", QuantChoice(), 1, 2, 0, TestSpec(Kind.COMBINED, 10, 4))
    row = row_from_measurement("cpu", point, _measurement(), 1_000_000_000, 50.0, "test cpu")
    # tokens per repetition: batch 2 x (10 + 4) = 28; seconds 1.1 and 1.0
    assert row.samples["tokens_per_s"] == pytest.approx([28 / 1.1, 28 / 1.0])
    assert row.tokens_per_s == pytest.approx((28 / 1.1 + 28) / 2)
    assert row.tokens_per_s_std == pytest.approx(stddev([28 / 1.1, 28.0]))
    assert row.ttft_ms == pytest.approx(500.0)
    assert row.itl_median_ms == pytest.approx(100.0)  # steps 0.1 x5, 0.2 x3
    assert row.itl_p90_ms == pytest.approx(200.0)
    mean_step = (5 * 0.1 + 3 * 0.2) / 8
    assert row.weight_gbps == pytest.approx(1.0 / mean_step)
    assert row.roofline_share == pytest.approx(1.0 / mean_step / 50.0)
    assert row.peak_host_mb == 1024 and row.peak_device_mb is None
    assert row.kv_gb is None and row.kv_gbps is None  # no cache size given


def test_kv_gbps_counts_the_cached_keys_and_values_each_step_reads_averaged_over_the_steps():
    point = Point("cpu", "fp32", QuantChoice(), 1, 2, 6, TestSpec(Kind.COMBINED, 10, 4))
    row = row_from_measurement("cpu", point, _measurement(), 10**9, 50.0, "d", kv_bytes_per_token=512)
    # context 6 + 10 = 16: the steps attend over 17, 18, 19, 20 tokens, mean 18.5; 2 rows of 512 bytes per token
    assert row.kv_gb == pytest.approx(2 * 512 * 18.5 / 1e9)
    mean_step = (5 * 0.1 + 3 * 0.2) / 8
    assert row.kv_gbps == pytest.approx(2 * 512 * 18.5 / mean_step / 1e9)
    assert row.weight_gbps == pytest.approx(1.0 / mean_step)  # the weights' figure is unchanged by the cache


def test_a_prefill_row_has_ttft_but_no_decode_latency_or_bandwidth():
    point = Point("cpu", "fp32", QuantChoice(), 1, 1, 0, PP8)
    row = row_from_measurement("cpu", point, Measurement([Sample(0.004)], None, None, "t"), 10, 50.0, "d")
    assert row.tokens_per_s == pytest.approx(2000.0) and row.ttft_ms == pytest.approx(4.0)
    assert row.itl_median_ms is None and row.weight_gbps is None and row.roofline_share is None


# --- reports and ratios --------------------------------------------------------------------------------------------


def _row(engine: str, rate: float, quant: str = "none", test: str = "tg4", device: str = "test cpu") -> Row:
    return Row(
        engine, "fp32", quant, 1, 1, test, 0, device=device, tokens_per_s=rate, tokens_per_s_std=0.5, samples={"x": [1]}
    )


def _rows() -> list[Row]:
    point = Point("transformers", "fp32", QuantChoice(), 1, 1, 0, PP8)
    return [
        _row("cpu", 100.0),
        _row("cpu", 150.0, quant="int8-rowwise"),
        _row("cuda", 400.0, device="test gpu"),
        _row("transformers", 50.0),
        _row("transformers", 200.0, device="test gpu"),
        skipped_row("transformers", point, "no modeling code", device="test cpu"),
    ]


def test_ratios_compare_with_the_first_backend_and_the_baseline_on_the_same_device_and_configuration():
    rows = _rows()
    add_ratios(rows, "cpu", "transformers")
    cpu, cpu_int8, cuda, base, base_gpu, _ = rows
    assert cpu.vs_first == pytest.approx(1.0) and cuda.vs_first == pytest.approx(4.0)
    assert cpu_int8.vs_first == pytest.approx(1.0)  # compared with itself: no other backend ran int8
    assert cpu.vs_baseline == pytest.approx(2.0) and cuda.vs_baseline == pytest.approx(2.0)  # 400 / 200 on the gpu
    assert cpu_int8.vs_baseline == pytest.approx(3.0)  # quantized ours against transformers' float weights
    assert base.vs_baseline is None and base.vs_first is None and base_gpu.vs_baseline is None


def test_a_row_has_no_baseline_ratio_when_transformers_ran_on_another_device_only():
    rows = [_row("cuda", 400.0, device="test gpu"), _row("transformers", 50.0, device="test cpu")]
    add_ratios(rows, "cuda", "transformers")
    assert rows[0].vs_baseline is None


def test_the_baseline_runs_on_the_device_of_each_backends_rows_and_names_it(monkeypatch):
    """cpu fp32 and cuda fp16 in one plan (the reviewer's case): transformers runs fp32 on the cpu and fp16 on the
    gpu, each row carrying that device's name, and a device transformers cannot use is skipped with the reason."""
    from glm_engine.bench.baseline import BaselinePlan

    devices = {"cpu": torch.device("cpu"), "cuda": torch.device("cuda", 0), "ascend": torch.device("xpu", 0)}
    monkeypatch.setattr(runner_module, "backend_device", lambda backend: devices[backend])
    monkeypatch.setattr(runner_module, "plan_baseline", lambda *args: BaselinePlan(None, None, "py", "", "v"))
    calls = []

    def fake_run_baseline(plan, points, device, repetitions, warmup, seed, threads, on_result):
        calls.append((device, [(p.dtype, p.test.name) for p in points]))
        for p in points:
            on_result({"point": point_to_json(p), "error": "not really run"})

    monkeypatch.setattr(runner_module, "run_baseline", fake_run_baseline)
    tg = parse_tests(["tg4"])
    points = [
        *expand(["cpu"], ["fp32"], [QuantChoice()], [1], [1], [0], tg),
        *expand(["cuda"], ["fp16"], [QuantChoice(8)], [1], [1], [0], tg),
        *expand(["ascend"], ["fp16"], [QuantChoice()], [1], [1], [0], tg),
    ]
    groups = runner_module._baseline_points(points)
    assert {b: [(p.dtype, p.quant.name) for p in g] for b, g in groups.items()} == {
        "cpu": [("fp32", "none")],
        "cuda": [("fp16", "none")],
        "ascend": [("fp16", "none")],
    }
    run = runner_module.BenchRun(
        devices={"cpu": {"name": "test cpu"}, "cuda": {"name": "test gpu"}, "ascend": {"name": "test npu"}}
    )
    runner_module._run_baselines(None, groups, runner_module.BenchOptions(), run, lambda label: None)
    assert calls == [("cpu", [("fp32", "tg4")]), ("cuda:0", [("fp16", "tg4")])]
    assert [(r.device, r.dtype, r.status) for r in run.rows] == [
        ("test cpu", "fp32", "failed"),
        ("test gpu", "fp16", "failed"),
        ("test npu", "fp16", "skipped"),
    ]
    assert "not on ascend's device xpu:0" in run.rows[2].reason


def test_a_single_backend_gets_no_first_backend_ratio():
    rows = [_row("cpu", 100.0), _row("transformers", 25.0)]
    add_ratios(rows, "cpu", "transformers")
    assert rows[0].vs_first is None and rows[0].vs_baseline == pytest.approx(4.0)


META = {
    "model": {"description": "a test model"},
    "devices": [
        {
            "backend": "cpu",
            "name": "test cpu",
            "read_bandwidth_gbps": 20.0,
            "read_bandwidth_kernel": "gemv fp32",
            "read_bandwidth_kernels": {"sum fp32": 16.0, "gemv fp32": 20.0},
            "probe_buffer_bytes": 2**31,
            "last_level_cache_bytes": 256 * 2**20,
            "detail": "2 threads",
        }
    ],
    "protocol": {"repetitions": 2, "warmup": 1},
    "environment": {"git_commit": "abc"},
    "notes": [],
    "interrupted": False,
}


def test_markdown_shows_every_row_skips_with_reasons_and_a_side_by_side_table_with_ratios():
    rows = _rows()
    add_ratios(rows, "cpu", "transformers")
    text = render_report(META, rows, ReportFormat.md, "cpu", "transformers")
    assert (
        "measured read bandwidth 20.0 GB/s (gemv fp32; sum fp32 16.0) over 2048 MiB, last-level cache 256 MiB" in text
    )
    assert "| cpu | fp32 | none | 1 | 1 | tg4 @ d0 | 100.00 ± 0.50 |" in text
    assert "| transformers | fp32 | none | 1 | 1 | pp8 @ d0 | skipped |" in text and "no modeling code" in text
    side = text.split("## Side by side")[1]
    header = "| dtype | quant | tp | batch | test | cpu t/s | cuda t/s | cuda / cpu | transformers t/s (test cpu) |"
    assert header + " transformers t/s (test gpu) | cpu / transformers | cuda / transformers |" in side
    expected = "| fp32 | none | 1 | 1 | tg4 @ d0 | 100.00 ± 0.50 | 400.00 ± 0.50 | 4.00x | 50.00 ± 0.50 |"
    assert expected + " 200.00 ± 0.50 | 2.00x | 2.00x |" in side


def test_csv_has_one_line_per_row_and_no_raw_samples():
    rows = _rows()
    add_ratios(rows, "cpu", "transformers")
    table = list(csv.DictReader(io.StringIO(render_report(META, rows, ReportFormat.csv, "cpu", "transformers"))))
    assert len(table) == 6 and "samples" not in table[0]
    assert float(table[2]["vs_first"]) == pytest.approx(4.0)
    assert table[5]["status"] == "skipped" and table[5]["reason"] == "no modeling code"


def test_json_carries_raw_samples_environment_and_model():
    data = json.loads(render_report(META, _rows(), ReportFormat.json, "cpu", "transformers"))
    assert data["environment"]["git_commit"] == "abc" and data["model"]["description"] == "a test model"
    assert data["rows"][0]["samples"] == {"x": [1]} and len(data["rows"]) == 6


def test_the_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
    from glm_engine.bench.plot import write_plot

    path = tmp_path / "bench.png"
    write_plot(_rows(), path, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_matplotlib_says_what_to_install(monkeypatch, tmp_path):
    from glm_engine.bench import plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'glm-engine\[plot\]'"):
        plot.write_plot(_rows(), tmp_path / "x.png", "t")


# --- measurement, models, baseline ---------------------------------------------------------------------------------


class _CountingRunner:
    """Records the width of every forward and how many tokens its cache held."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def new_cache(self, batch_size, max_length):
        return KVCache(1, batch_size, 1, max_length, 1, torch.float32, torch.device("cpu"))

    def forward(self, input_ids, position_ids, blocked, cache=None, last_only=False):
        assert blocked.shape[-1] == cache.length + input_ids.shape[1]  # the mask covers cache + new tokens
        self.calls.append((cache.length, input_ids.shape[1]))
        cache.length += input_ids.shape[1]
        return torch.zeros(input_ids.shape[0], 1, 8)

    def step(self, cache, input_ids, position_ids, blocked):
        return self.forward(input_ids, position_ids, blocked, cache)


@pytest.mark.parametrize(
    ("test", "depth", "calls"),
    [
        (PP8, 0, [(0, 8)]),
        (PP8, 16, [(0, 16), (16, 8)]),
        (TG4, 0, [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)]),
        (TestSpec(Kind.COMBINED, 8, 2), 4, [(0, 4), (4, 8), (12, 1), (13, 1)]),
    ],
)
def test_one_repetition_fills_the_depth_untimed_then_times_the_prompt_and_each_step(test, depth, calls):
    point = Point("cpu", "fp32", QuantChoice(), 1, 2, depth, test)
    work = build_workload(GLM, GLM_CONFIG, 2, max(depth + test.n_prompt, 1), point.tokens_needed(), 100, 0)
    fake = _CountingRunner()
    result = measure(fake, work, point, repetitions=2, warmup=1, make_stepper=lambda: fake)
    assert fake.calls == calls * 3  # warm-up and two timed repetitions, each from an emptied cache
    assert len(result.samples) == 2
    assert all(len(s.step_s) == test.n_gen and (s.prefill_s is None) == (test.n_prompt == 0) for s in result.samples)


class _FakeHFModel:
    """Stands in for a transformers ChatGLM model: records the past it is given and returns a past that says how
    many tokens it holds, so the baseline's runner and cache are checked without transformers."""

    def __init__(self) -> None:
        self.pasts: list[int | None] = []

    def __call__(self, input_ids, position_ids, attention_mask, past_key_values, use_cache, return_dict):
        held = 0 if past_key_values is None else past_key_values
        self.pasts.append(past_key_values)
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], 8)
        return SimpleNamespace(logits=logits, past_key_values=held + input_ids.shape[1])


def test_the_baseline_runner_starts_each_repetition_from_an_empty_past():
    from glm_engine.bench.hf_worker import HFRunner

    test = TestSpec(Kind.COMBINED, 8, 2)
    point = Point("transformers", "fp32", QuantChoice(), 1, 1, 4, test)
    work = build_workload(CHATGLM, CHATGLM_CONFIG, 1, 12, point.tokens_needed(), 100, 0)
    model = _FakeHFModel()
    runner = HFRunner(model, torch.device("cpu"))
    result = measure(runner, work, point, repetitions=2, warmup=1, make_stepper=lambda: runner)
    assert model.pasts == [None, 4, 12, 13] * 3  # depth, prompt, two steps; the cache emptied between repetitions
    assert len(result.samples) == 2


class _LoggingTimer:
    """A timer that logs start/stop into the runner's call log, to see which forwards fall inside the timing."""

    log: ClassVar[list] = []

    def __init__(self, device):
        self.kind = "logged"

    def start(self):
        self.log.append("start")

    def stop(self):
        self.log.append("stop")
        return 0.001


class _LoggingRunner(_CountingRunner):
    def forward(self, input_ids, position_ids, blocked, cache=None, last_only=False):
        _LoggingTimer.log.append(("forward", cache.length, input_ids.shape[1]))
        return super().forward(input_ids, position_ids, blocked, cache, last_only)


@pytest.mark.parametrize(
    ("test", "depth", "expected"),
    [
        # the depth prefix runs before the timing starts, then the prompt alone is timed
        (PP8, 16, [("forward", 0, 16), "start", ("forward", 16, 8), "stop"]),
        # tg at depth 0: the one-token prompt is untimed, then each step timed alone
        (
            TestSpec(Kind.GENERATE, 0, 2),
            0,
            [("forward", 0, 1), "start", ("forward", 1, 1), "stop", "start", ("forward", 2, 1), "stop"],
        ),
        (
            TestSpec(Kind.COMBINED, 4, 1),
            8,
            [("forward", 0, 8), "start", ("forward", 8, 4), "stop", "start", ("forward", 12, 1), "stop"],
        ),
    ],
)
def test_only_the_prompt_and_each_decode_step_are_inside_the_timer(monkeypatch, test, depth, expected):
    from glm_engine.bench import measure as measure_module

    monkeypatch.setattr(measure_module, "Timer", _LoggingTimer)
    monkeypatch.setattr(_LoggingTimer, "log", [])
    point = Point("cpu", "fp32", QuantChoice(), 1, 1, depth, test)
    work = build_workload(GLM, GLM_CONFIG, 1, max(depth + test.n_prompt, 1), point.tokens_needed(), 100, 0)
    fake = _LoggingRunner()
    measure(fake, work, point, repetitions=1, warmup=0, make_stepper=lambda: fake)
    assert _LoggingTimer.log == expected


def test_chatglm_workload_positions_follow_its_generation_rules():
    work = build_workload(CHATGLM, CHATGLM_CONFIG, 2, 4, 7, 100, 0)
    assert work.positions.shape == (2, 2, 7)
    assert work.positions[0, 0].tolist() == [0, 1, 2, 3, 3, 3, 3]
    assert work.positions[0, 1].tolist() == [0, 0, 0, 1, 2, 3, 4]
    assert not work.blocked[0, 0, 0, :3].any() and work.blocked[0, 0, 4, 5]  # prompt bidirectional, then causal


def test_random_models_take_shapes_and_other_models_refuse_them():
    source = resolve_model("random:chatglm-6b", Shape(layers=2, hidden=512))
    assert source.family is CHATGLM and source.random
    assert (source.config.num_layers, source.config.hidden_size, source.config.num_attention_heads) == (2, 512, 4)
    assert source.config.inner_hidden_size == 2048  # the preset's 4x ratio
    with pytest.raises(InputError, match="use --model random:<preset>"):
        resolve_model(None, Shape(layers=2))
    with pytest.raises(InputError, match="unknown random model"):
        resolve_model("random:gpt-2")


def test_a_random_model_loads_quantized_through_the_engines_loader():
    source = resolve_model("random:glm-tiny", Shape(layers=1))
    loaded = source.load("cpu", "bf16", QuantChoice(4, 32))
    assert loaded.runner.config.num_layers == 1
    assert any("INT4 groupwise" in note for note in loaded.notes)


def _layer_parameters(h: int, inner: int, glu: bool) -> int:
    """One transformer layer counted by hand: two layernorms (weight + bias), QKV and output projection with
    biases, and the MLP (GLM-130B's GeGLU doubles the first projection's width)."""
    first = 2 * inner if glu else inner
    return 2 * 2 * h + (3 * h * h + 3 * h) + (h * h + h) + (h * first + first) + (inner * h + h)


def test_decode_reads_the_tied_embedding_once_and_a_separate_table_only_by_a_row():
    fp32 = 4
    glm = resolve_model("random:glm-tiny", Shape(layers=1)).load("cpu", "fp32", QuantChoice())
    c = glm.runner.config
    assert (c.num_layers, c.hidden_size, c.inner_hidden_size, c.vocab_size) == (1, 64, 160, 150528)
    # the embedding (also the output projection, read whole for the logits), one layer, the final layernorm
    glm_parameters = 150528 * 64 + _layer_parameters(64, 160, glu=True) + 2 * 64
    assert glm_parameters == 9_681_920
    assert glm.weight_bytes == glm_parameters * fp32
    glm_out = resolve_model("random:glm-tiny", Shape(layers=1)).load("cpu", "fp32", QuantChoice(8, None, True))
    table = glm_out.runner.weights.word_embeddings
    assert glm_out.weight_bytes == glm_out.runner.weights.nbytes() - table.numel() * 4
    chat = resolve_model("chatglm-tiny").load("cpu", "fp32", QuantChoice())
    c = chat.runner.config
    assert (c.num_layers, c.hidden_size, c.inner_hidden_size, c.vocab_size) == (2, 64, 160, 4096)
    # two layers, the final layernorm and lm_head; the separate input embedding (4096 x 64) gives one row per token
    chat_parameters = 2 * _layer_parameters(64, 160, glu=False) + 2 * 64 + 4096 * 64
    assert chat_parameters == 337_472
    assert chat.weight_bytes == chat_parameters * fp32
    # keys and values per cached token and batch row: 2 x layers x hidden x 4 bytes
    assert glm.kv_bytes_per_token == 2 * 1 * 64 * fp32 and chat.kv_bytes_per_token == 2 * 2 * 64 * fp32


def test_the_baseline_is_skipped_with_the_reason_for_glm_models_and_missing_code():
    glm = plan_baseline(resolve_model(None), None, None)
    assert "no class for the GLM-130B architecture" in glm.skipped
    rnd = plan_baseline(resolve_model("random:chatglm-tiny"), None, None)
    assert "exists only in this process" in rnd.skipped


def _tiny_hf_folder(folder: Path) -> Path:
    """chatglm-tiny as a Hugging Face folder (lm_head tied to the embedding, as the releases have it)."""
    from safetensors.torch import save_file

    from glm_engine.model.chatglm.weights import random_state_dict

    config = CHATGLM_PRESETS["chatglm-tiny"]
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**config.to_hf_dict(), "architectures": ["ChatGLMModel"]}))
    weights = random_state_dict(config, seed=1, dtype=torch.float16)
    weights["lm_head.weight"] = weights["transformer.word_embeddings.weight"].clone()
    save_file(weights, str(folder / "model.safetensors"))
    shutil.copy(BUILTIN_TOKENIZER_PATH, folder / "ice_text.model")
    return folder


def test_an_hf_folder_without_modeling_code_names_the_option_that_supplies_it(tmp_path):
    plan = plan_baseline(resolve_model(str(_tiny_hf_folder(tmp_path / "hf"))), None, None)
    assert "has no modeling code" in plan.skipped and "--baseline-code" in plan.skipped


def test_without_transformers_the_baseline_says_what_to_install(tmp_path):
    try:
        import transformers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("transformers is installed here, so the baseline would run")
    code = tmp_path / "code"
    code.mkdir()
    for name in ("modeling_chatglm.py", "configuration_chatglm.py"):
        (code / name).write_text("")
    plan = plan_baseline(resolve_model(str(_tiny_hf_folder(tmp_path / "hf"))), sys.executable, code)
    assert "transformers cannot be imported" in plan.skipped and "pip install" in plan.skipped


BASELINE_PYTHON = os.environ.get("GLM_ENGINE_BENCH_BASELINE_PYTHON")
CHATGLM_CODE = os.environ.get("GLM_ENGINE_BENCH_CHATGLM_CODE")


@pytest.mark.skipif(
    not (BASELINE_PYTHON and CHATGLM_CODE),
    reason="set GLM_ENGINE_BENCH_BASELINE_PYTHON (an interpreter with transformers 4.27-4.33) and "
    "GLM_ENGINE_BENCH_CHATGLM_CODE (a folder with THUDM/chatglm-6b's modeling_chatglm.py) to time the baseline",
)
def test_the_transformers_baseline_runs_the_same_folder_side_by_side(tmp_path):
    folder = _tiny_hf_folder(tmp_path / "hf")
    args = ["bench", "--model", str(folder), "-r", "1", "--warmup", "0", "-t", "pg8,2", "--bandwidth-gib", "0"]
    args += ["--baseline-python", BASELINE_PYTHON, "--baseline-code", CHATGLM_CODE, "-o", "json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [(r["engine"], r["status"]) for r in rows] == [("cpu", OK), ("transformers", OK)]
    assert rows[0]["vs_baseline"] == pytest.approx(rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"])


# --- the command ----------------------------------------------------------------------------------------------------

TINY = ["bench", "-r", "1", "-t", "pp8,tg4", "--bandwidth-gib", "0.05"]


def test_bench_on_the_demo_model_prints_rows_and_the_skipped_baseline(tmp_path):
    result = CliRunner().invoke(app, [*TINY, "--out", str(tmp_path / "bench.md"), "--plot", str(tmp_path / "b.png")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "bench.md").read_text()
    assert "# glm-engine bench: the built-in demo model" in text
    assert "| cpu | fp32 | none | 1 | 1 | pp8 @ d0 |" in text and "| cpu | fp32 | none | 1 | 1 | tg4 @ d0 |" in text
    # a baseline that cannot run the model is said once in the header, not on every row, and makes no side-by-side
    assert "- transformers: skipped every configuration: transformers has no class for the GLM-130B" in text
    assert "| transformers |" not in text and "## Side by side" not in text
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_json_has_samples_versions_and_a_roofline_share():
    result = CliRunner().invoke(app, [*TINY, "--no-baseline", "-o", "json", "-d", "0,8"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["environment"]["torch"] == torch.__version__ and data["model"]["config"]["num_layers"] == 4
    assert [r["test"] + "@" + str(r["depth"]) for r in data["rows"]] == ["pp8@0", "tg4@0", "pp8@8", "tg4@8"]
    tg = data["rows"][1]
    assert len(tg["samples"]["step_s"][0]) == 4 and tg["roofline_share"] > 0
    (device,) = data["devices"]
    assert device["read_bandwidth_kernel"] in device["read_bandwidth_kernels"]
    assert set(device["read_bandwidth_kernels"]) == {"sum fp32", "copy (read + write)", "gemv fp32"}
    assert tg["weights_gb"] == pytest.approx(data["rows"][0]["weights_gb"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-t", "pp0"], "lengths must be at least 1"),
        (["-t", "pg12"], "pg<N>,<M>"),
        (["--backend", "nope"], "unknown backend 'nope'"),
        (["-t", "pp600"], "needs 600 positions"),
        (["--dtype", "fp64"], "unknown dtype 'fp64'; choose one of fp32, bf16, fp16"),
        (["--dtype", "fp32,int8"], "unknown dtype 'int8'"),
        (["--bandwidth-gib", "-1"], "--bandwidth-gib takes a size in GiB, or 0 to skip"),
    ],
)
def test_bad_requests_fail_with_one_error_line(args, message):
    result = CliRunner().invoke(app, ["bench", *args])
    assert result.exit_code == 1 and message in result.output


def test_ctrl_c_prints_and_writes_the_finished_rows_then_exits_130(monkeypatch, tmp_path):
    calls = []

    def interrupted_after_one(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    monkeypatch.setattr(runner_module, "measure", interrupted_after_one)
    out = tmp_path / "partial.csv"
    result = CliRunner().invoke(app, [*TINY, "--no-baseline", "-o", "csv", "--out", str(out)])
    assert result.exit_code == 130
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["test"], r["status"]) for r in rows] == [("pp8", OK)]
    assert "interrupted" in result.output


def test_a_tp2_group_runs_as_two_ranks_and_reports_rank_0s_rows():
    args = ["bench", "--model", "glm-tiny", "--tp", "1,2", "-r", "1", "-t", "tg2", "--bandwidth-gib", "0.05"]
    result = CliRunner().invoke(app, [*args, "--no-baseline", "-o", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [(r["tp"], r["status"]) for r in rows] == [(1, OK), (2, OK)]
    assert rows[1]["weights_gb"] < rows[0]["weights_gb"]  # rank 0 holds half of the sharded weights
    assert rows[1]["kv_gb"] == pytest.approx(rows[0]["kv_gb"] / 2)  # and half of the heads' keys and values


def test_on_an_accelerator_the_timer_uses_device_events_and_memory_the_devices_peak(monkeypatch):
    from types import SimpleNamespace

    from glm_engine.bench import device as device_module

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing
            self.at = None

        def record(self):
            self.at = len(log)
            log.append("record")

        def synchronize(self):
            log.append("synchronize")

        def elapsed_time(self, end):
            return 250.0  # milliseconds, as torch.cuda.Event reports

    log: list[str] = []
    fake = SimpleNamespace(
        Event=Event,
        synchronize=lambda device: log.append("sync"),
        reset_peak_memory_stats=lambda device: log.append("reset"),
        max_memory_allocated=lambda device: 3 * 2**20,
    )
    monkeypatch.setattr(device_module, "_module", lambda device: fake)
    timer = device_module.Timer(torch.device("cpu"))
    timer.start()
    assert timer.stop() == pytest.approx(0.25) and log == ["record", "record", "synchronize"]
    memory = device_module.MemoryTracker(torch.device("cpu"))
    memory.reset()
    assert "reset" in log and memory.device_peak() == 3 * 2**20


def test_an_onnx_export_is_timed_on_onnxruntime_without_a_bandwidth_claim(tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")
    from glm_engine.engine import DEFAULT_MODEL
    from glm_engine.export.onnx_export import export_onnx

    export_onnx(DEFAULT_MODEL, tmp_path / "onnx", max_seq=64)
    args = ["bench", "--model", str(tmp_path / "onnx"), "--backend", "onnxruntime", "-r", "1", "-t", "tg2"]
    result = CliRunner().invoke(app, [*args, "--bandwidth-gib", "0", "--no-baseline", "-o", "json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["rows"]
    assert (row["engine"], row["status"], row["dtype"]) == ("onnxruntime", OK, "fp32")
    assert row["weight_gbps"] is None and row["itl_median_ms"] > 0  # the graph's bytes are not ours to count
    auto = CliRunner().invoke(app, [*args[:3], "-r", "1", "-t", "tg2", "--bandwidth-gib", "0", "--no-baseline"])
    assert auto.exit_code == 0 and "| onnxruntime | fp32 |" in auto.output  # no --backend: the one that runs it
    wrong = CliRunner().invoke(app, [*args[:3], "--backend", "cpu", "-t", "tg2", "--no-baseline"])
    assert wrong.exit_code == 1 and "is an ONNX export: use --backend onnxruntime" in wrong.output


# --- the plan the command builds ------------------------------------------------------------------------------------


@pytest.fixture
def planned(monkeypatch):
    """Run ``bench`` with its arguments up to the plan: the points it would measure, nothing measured."""
    from glm_engine.cli import bench as bench_cli

    seen: list = []
    monkeypatch.setattr(bench_cli, "run_plan", lambda source, shape, points, *rest: seen.append(points))

    def plan(*args: str) -> tuple[list[Point], str]:
        result = CliRunner().invoke(app, ["bench", "--no-baseline", "--bandwidth-gib", "0", *args])
        assert result.exit_code == 0, result.output
        return seen[-1], result.stdout

    return plan


def test_repeated_backends_dtypes_and_tests_are_planned_once_in_their_first_order(planned):
    points, _ = planned("--backend", "cpu,auto,cpu", "--dtype", "bf16,fp32,bf16", "-t", "tg4,pp8,tg4", "-t", "pp8")
    assert [(p.backend, p.dtype, p.test.name) for p in points] == [
        ("cpu", "bf16", "tg4"),
        ("cpu", "bf16", "pp8"),
        ("cpu", "fp32", "tg4"),
        ("cpu", "fp32", "pp8"),
    ]
    assert parse_tests(["pg8,2,tg4", "pg8:2"]) == [TestSpec(Kind.COMBINED, 8, 2), TG4]


def test_dtypes_are_lowercased_and_checked_before_anything_runs(planned):
    points, _ = planned("--dtype", "FP32,Bf16,fp32", "-t", "tg4")
    assert [p.dtype for p in points] == ["fp32", "bf16"]


def test_several_backends_without_dtype_share_one_their_all_run_or_say_why_not():
    from glm_engine.bench.models import common_dtype

    assert common_dtype({"cpu": ["fp32", "bf16", "fp16"], "cuda": ["fp16", "bf16", "fp32"]}) == "fp32"  # cpu's first
    assert common_dtype({"cpu": ["fp32", "bf16", "fp16"], "cuda": ["fp16", "bf16"]}) == "fp16"
    assert common_dtype({"a": ["fp32", "bf16"], "b": ["bf16", "fp16"]}) == "bf16"
    assert common_dtype({"a": ["fp32"], "b": ["fp16"]}) is None


def test_the_plan_of_several_backends_without_dtype_uses_the_common_one_and_the_header_says_so(planned, monkeypatch):
    from glm_engine.cli import bench as bench_cli

    supported = {"cpu": ["fp32", "bf16", "fp16"], "other": ["fp16", "bf16"]}
    monkeypatch.setattr(bench_cli, "supported_dtype_names", lambda name: supported[name])
    points, notes = bench_cli._points(["cpu", "other"], None, None, None, None, None, None, None, None, None, ["tg4"])
    assert [(p.backend, p.dtype) for p in points] == [("cpu", "fp16"), ("other", "fp16")]
    assert "every backend runs fp16" in notes[0]
    supported["other"] = ["bf16"]
    points, notes = bench_cli._points(["cpu", "other"], None, None, None, None, None, None, None, None, None, ["tg4"])
    assert [p.dtype for p in points] == ["bf16", "bf16"]
    supported["other"] = ["fp16"]
    monkeypatch.setattr(bench_cli, "dtype_or_default", lambda name, dtype: supported[name][0])
    supported["cpu"] = ["fp32"]
    points, notes = bench_cli._points(["cpu", "other"], None, None, None, None, None, None, None, None, None, ["tg4"])
    assert [p.dtype for p in points] == ["fp32", "fp16"] and "pass --dtype" in notes[0]
    _, stdout = planned("--backend", "cpu", "-t", "tg4")  # one backend: its own default, no note
    assert "no --dtype given" not in stdout


def test_rows_whose_stddev_exceeds_a_quarter_of_the_mean_are_marked_noisy_and_the_header_says_why():
    point = Point("cpu", "fp32", QuantChoice(), 1, 1, 0, PP8)
    steady = row_from_measurement("cpu", point, Measurement([Sample(0.10), Sample(0.11)], None, None, "t"), 1, 0, "d")
    noisy = row_from_measurement("cpu", point, Measurement([Sample(0.10), Sample(0.30)], None, None, "t"), 1, 0, "d")
    assert not steady.noisy and noisy.noisy  # rates 80 and 26.7: stddev 37.7 is 71% of the mean 53.3
    text = render_report(META, [steady], ReportFormat.md, "cpu", "transformers")
    assert "(noisy)" not in text
    text = render_report(META, [steady, noisy], ReportFormat.md, "cpu", "transformers")
    assert f"| {noisy.tokens_per_s:.2f} ± {noisy.tokens_per_s_std:.2f} (noisy) |" in text
    assert "- (noisy): the row's t/s stddev is above 25% of its mean" in text
    data = json.loads(render_report(META, [noisy], ReportFormat.json, "cpu", "transformers"))
    assert data["rows"][0]["noisy"] is True
