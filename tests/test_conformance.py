"""The conformance suite: every op-level backend against the float64 oracle (unavailable ones skip, saying why), the
self-test's broken tables caught, skips that never run, poisoning, reports and the CLI."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from typer.testing import CliRunner

from glm_engine.backends.base import BackendKind, Verdict
from glm_engine.backends.cpu import CpuBackend
from glm_engine.backends.registry import REGISTRY
from glm_engine.cli.main import app
from glm_engine.conformance import runner as runner_module
from glm_engine.conformance.cases import PERF_CASES, TEST_CASES, GroupedAttentionCase, LinearCase, select
from glm_engine.conformance.model_checks import run_model_checks
from glm_engine.conformance.poison import poisoned_allocations
from glm_engine.conformance.report import ReportFormat, perf_report, results_report, support_report
from glm_engine.conformance.runner import Status, case_seed, run_perf, run_tests, support_matrix
from glm_engine.conformance.selftest import BROKEN_TABLES, self_test
from glm_engine.conformance.thresholds import THRESHOLDS, threshold_for
from glm_engine.model.registry import FAMILIES
from glm_engine.ops.interface import Op
from glm_engine.ops.torch_ops import TorchOps
from glm_engine.quant.formats import QuantFormat

OP_LEVEL_BACKENDS = [name for name in REGISTRY.names() if REGISTRY.get(name).kind is BackendKind.OP_LEVEL]


def _available(name: str):
    backend = REGISTRY.get(name)
    verdict = backend.availability()
    if not verdict:
        pytest.skip(f"{name} is not available here: {verdict.reason}")
    return backend


def _failures(rows) -> str:
    return "\n".join(f"{r.check} {r.shape} {r.dtype}: {r.detail} (seed {r.seed})" for r in rows)


@pytest.mark.parametrize("name", OP_LEVEL_BACKENDS)
def test_every_op_matches_the_float64_oracle(name: str) -> None:
    run = run_tests(_available(name))
    ran = [r for r in run.results if r.status is not Status.SKIP]
    assert ran, "no case ran"
    assert run.passed, f"base seed {run.seed}:\n{_failures(run.failed)}"


@pytest.mark.parametrize("name", OP_LEVEL_BACKENDS)
def test_tiny_model_matches_the_float64_reference_at_tp1(name: str) -> None:
    rows = run_model_checks(_available(name), tp=[1])
    assert {r.check for r in rows} >= {"model:prefill", "model:decode", "model:greedy"}
    assert all(r.status is not Status.FAIL for r in rows), _failures([r for r in rows if r.status is Status.FAIL])


@pytest.mark.parametrize("family", ["glm", "chatglm"])
def test_tiny_model_at_tp2_over_gloo_matches_the_reference(family: str) -> None:
    rows = run_model_checks(CpuBackend(), dtypes=[torch.float32], tp=[2], quant=False, families=[family])
    assert [r.status for r in rows] == [Status.PASS] * 3, _failures(rows)
    assert rows[0].shape == f"{family} tp2 float"


def test_model_checks_cover_every_family_by_default() -> None:
    rows = run_model_checks(CpuBackend(), dtypes=[torch.float32], tp=[1], quant=False)
    assert {r.shape for r in rows} == {f"{f.name} tp1 float" for f in FAMILIES}
    assert all(r.status is Status.PASS for r in rows), _failures(rows)


@pytest.mark.parametrize(("table", "op"), BROKEN_TABLES, ids=[t.__name__ for t, _ in BROKEN_TABLES])
def test_self_test_catches_each_broken_table(table: type[TorchOps], op: Op) -> None:
    run = run_tests(CpuBackend(), ops=[op], table_factory=lambda dtype: table(torch.device("cpu"), dtype))
    assert run.failed, f"{table.__name__} passed every {op.value} row (seed {run.seed})"


def test_self_test_function_reports_every_table_caught_and_the_correct_table_clean() -> None:
    results = self_test()
    assert all(r.caught for r in results)
    assert {r.table for r in results} == {t.__name__ for t, _ in BROKEN_TABLES} | {"TorchOps"}
    assert all(r.failed_rows == 0 for r in results if r.table == "TorchOps")


def test_unwritten_memory_reads_as_nan_inside_the_poisoned_block_only() -> None:
    deterministic = torch.are_deterministic_algorithms_enabled()
    filling = torch.utils.deterministic.fill_uninitialized_memory
    with poisoned_allocations(torch.device("cpu")):
        assert torch.empty(64).isnan().all()
        assert torch.empty(8, dtype=torch.bfloat16).isnan().all()
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.utils.deterministic.fill_uninitialized_memory == filling


class _PickyBackend(CpuBackend):
    """The CPU backend refusing fp16 entirely and INT4 weights, with its table recording every dtype it was asked."""

    def __init__(self) -> None:
        self.asked: list[torch.dtype] = []

    def supports(self, op, dtype, quant_format=None):
        if dtype == torch.float16:
            return Verdict(False, "picky: no fp16 here")
        if quant_format in (QuantFormat.INT4_ROWWISE, QuantFormat.INT4_GROUPWISE):
            return Verdict(False, "picky: no INT4 kernels")
        return super().supports(op, dtype, quant_format)

    def op_table(self, dtype, device_index=0):
        self.asked.append(dtype)
        return super().op_table(dtype, device_index)


def test_refused_combinations_are_skipped_with_the_reason_and_never_run() -> None:
    backend = _PickyBackend()
    run = run_tests(backend, ops=[Op.LINEAR])
    skipped = [r for r in run.results if r.status is Status.SKIP]
    assert {r.detail for r in skipped} == {"picky: no fp16 here", "picky: no INT4 kernels"}
    assert all(r.nmse is None and r.seed is None for r in skipped)
    assert torch.float16 not in backend.asked
    assert run.passed and any(r.status is Status.PASS for r in run.results)


def test_same_seed_draws_the_same_inputs_and_a_fresh_run_draws_new_ones() -> None:
    first = run_tests(CpuBackend(), ops=[Op.GELU], dtypes=[torch.float16], seed=123)
    again = run_tests(CpuBackend(), ops=[Op.GELU], dtypes=[torch.float16], seed=123)
    assert [r.nmse for r in first.results] == [r.nmse for r in again.results]
    fresh = [run_tests(CpuBackend(), ops=[Op.GELU], dtypes=[torch.float16]) for _ in range(2)]
    assert fresh[0].seed != fresh[1].seed  # fresh by default (two draws from 2^31 collide once in 2 billion)
    gelu_cases = select(TEST_CASES, [Op.GELU])
    assert [r.seed for r in fresh[0].results] == [case_seed(fresh[0].seed, c, torch.float16) for c in gelu_cases]
    assert (
        first.results[0].seed
        != run_tests(CpuBackend(), ops=[Op.GELU], dtypes=[torch.float16], seed=124).results[0].seed
    )


def test_every_case_and_model_check_has_a_threshold_with_a_note() -> None:
    for case in TEST_CASES + PERF_CASES:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            threshold_for(case.check, dtype)
    assert all(t.note for t in THRESHOLDS.values())
    assert ("model:logits:int4-groupwise", "bf16") in THRESHOLDS


def test_grid_covers_grouped_attention_rmsnorm_swiglu_and_the_chatglm2_gemm_shapes() -> None:
    """Grouped attention with one key/value head, two, and one per query head, in prefill and decode; both RMSNorm
    roundings; quantized products at the K of the SwiGLU down projection (13696); the perf grid at ChatGLM2/GLM-4's
    QKV, gate-up and down shapes."""
    grouped = select(TEST_CASES, [Op.GROUPED_ATTENTION])
    for variant in ("prefill", "decode"):
        groups = {
            "one" if c.groups == 1 else "per head" if c.groups == c.heads else c.groups
            for c in grouped
            if c.variant == variant
        }
        assert groups == {"one", 2, "per head"}, variant
    inputs = grouped[0].make_inputs(torch.Generator().manual_seed(0))
    assert inputs["k"].shape[1] == inputs["v"].shape[1] == grouped[0].groups < inputs["q"].shape[1]
    assert {c.check for c in select(TEST_CASES, [Op.RMSNORM])} == {"rmsnorm:weight-in-dtype", "rmsnorm:weight-in-fp32"}
    assert select(TEST_CASES, [Op.SWIGLU])
    assert {c.quant_format for c in select(TEST_CASES, [Op.LINEAR]) if c.k == 13696} == set(QuantFormat)
    quant_perf = {(c.k, c.n) for c in select(PERF_CASES, [Op.LINEAR]) if c.bits is not None}
    assert {(4096, 4608), (4096, 27392), (13696, 4096)} <= quant_perf
    with pytest.raises(ValueError, match="do not divide"):
        GroupedAttentionCase(1, 8, 1, 4, 64, context=2, layer_scale=1.0, groups=3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rmsnorm_variants_differ_exactly_by_where_the_gain_is_rounded(dtype: torch.dtype) -> None:
    """The NMSE rows cannot tell the two RMSNorm roundings apart; the reference ops pin them: the remote code's
    ``(w * h).to(dtype)`` (one rounding) against the native classes' ``w * h.to(dtype)`` (two)."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 256, generator=gen) * 3).to(dtype)
    weight = (1 + torch.randn(256, generator=gen) * 0.2).to(dtype)
    h = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)
    ops = TorchOps(torch.device("cpu"), dtype)
    one_rounding = ops.rmsnorm(x, weight, 1e-5, weight_in_fp32=True)
    two_roundings = ops.rmsnorm(x, weight, 1e-5, weight_in_fp32=False)
    assert torch.equal(one_rounding, (weight.float() * h).to(dtype))
    assert torch.equal(two_roundings, weight * h.to(dtype))
    assert one_rounding.dtype == two_roundings.dtype == dtype and not torch.equal(one_rounding, two_roundings)


def test_support_matrix_lists_every_op_dtype_and_linear_format_with_reasons() -> None:
    rows = support_matrix(_PickyBackend())
    assert len(rows) == (len(Op) - 1 + 1 + len(QuantFormat)) * 3
    refused = [r for r in rows if not r.supported]
    assert refused and all(r.reason.startswith("picky") for r in refused)
    parsed = list(csv.DictReader(io.StringIO(support_report("picky", rows, ReportFormat.csv))))
    assert parsed[0].keys() == {"op", "dtype", "quant_format", "supported", "reason"}


def test_perf_reports_time_bandwidth_and_gemm_throughput() -> None:
    rows = run_perf(CpuBackend(), cases=[LinearCase(4, 64, 64)], dtypes=[torch.float32])
    assert rows[0].median_us > 0 and rows[0].gbps > 0 and rows[0].tflops > 0
    assert "| linear |" in perf_report("cpu", "cpu", rows, ReportFormat.md)


def test_reports_render_in_every_format() -> None:
    run = run_tests(CpuBackend(), ops=[Op.DEEPNORM_RESIDUAL], dtypes=[torch.bfloat16], seed=1)
    data = json.loads(results_report(run, ReportFormat.json))
    assert data["passed"] and data["seed"] == 1 and len(data["rows"]) == len(run.results)
    assert data["worst_by_check"][0]["check"] == "deepnorm_residual"
    assert "**PASS**" in results_report(run, ReportFormat.md) and "--seed 1" in results_report(run, ReportFormat.md)
    assert results_report(run, ReportFormat.csv).splitlines()[0].startswith("status,check,shape")


def test_cli_passes_on_cpu_and_prints_the_table() -> None:
    result = CliRunner().invoke(app, ["conformance", "--backend", "cpu", "--op", "layernorm", "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    assert "**PASS**" in result.output and "| pass | layernorm |" in result.output


def test_cli_exits_nonzero_when_a_row_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(CpuBackend):
        def op_table(self, dtype, device_index=0):
            return BROKEN_TABLES[0][0](torch.device("cpu"), dtype)

    monkeypatch.setattr("glm_engine.cli.conformance.resolve_backend", lambda name: Broken())
    result = CliRunner().invoke(app, ["conformance", "--op", "attention", "--output", "json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["passed"] is False


def test_cli_names_why_a_backend_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    class Absent(CpuBackend):
        name = "absent"

        def availability(self):
            return Verdict(False, "no such device in this machine")

    monkeypatch.setattr(runner_module, "REGISTRY", type(REGISTRY)())
    runner_module.REGISTRY.register("absent", Absent)
    result = CliRunner().invoke(app, ["conformance", "--backend", "absent"])
    assert result.exit_code == 1
    assert "not available here: no such device in this machine" in result.output


def test_cli_self_test_passes() -> None:
    result = CliRunner().invoke(app, ["conformance", "--self-test", "--output", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"] is True
