"""Where ``bench`` and ``conformance`` report which attention path ran: a fallback from SDPA to the reference path
(and a CUDA-graph capture that fell back to eager steps) shows up in the row that ran it, never hidden behind the
path the policy chose.

The ``torch.cuda`` op table runs here on the CPU; the fallback is produced by standing in for ``run_sdpa``'s answer
(what it returns when no allowed kernel takes a call on a GPU, ``tests/test_cuda_attention.py``).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

import glm_engine.backends.torch_cuda.ops as torch_cuda_ops
from glm_engine.backends.cuda.ops import CudaOps
from glm_engine.backends.torch_cuda.attention import AttentionPath, SdpaRun
from glm_engine.bench.report import ReportFormat, render_report
from glm_engine.bench.rows import Row
from glm_engine.bench.runner import ran_paths
from glm_engine.conformance.cases import TEST_CASES, select
from glm_engine.conformance.runner import Status, run_case
from glm_engine.ops.interface import Op
from glm_engine.ops.torch_ops import reference_attention

META = {"model": {"description": "a test model"}, "protocol": {"repetitions": 1, "warmup": 0}}
NO_KERNEL = "no allowed SDPA kernel (memory-efficient) takes this call (torch's dispatcher)"


def no_sdpa_kernel(q, k, v, blocked, layer_scale, kernels):
    out = reference_attention(q, k, v, blocked, layer_scale)
    return SdpaRun(out, AttentionPath.REFERENCE, NO_KERNEL, fallback=NO_KERNEL)


def prefill_case():
    return next(c for c in select(TEST_CASES, [Op.ATTENTION]) if c.variant == "prefill")


def test_a_conformance_row_names_the_attention_path_that_ran(monkeypatch):
    case = prefill_case()
    table = CudaOps(torch.device("cpu"), torch.float32)
    inputs = case.make_inputs(torch.Generator().manual_seed(0))
    status, _, _, detail = run_case(case, table, inputs)
    assert status is Status.PASS and detail.startswith("prefill: sdpa: torch SDPA")
    monkeypatch.setattr(torch_cuda_ops, "run_sdpa", no_sdpa_kernel)
    status, _, _, detail = run_case(case, table, inputs)
    assert status is Status.PASS  # the reference path meets the contract; the row still says it was not SDPA
    assert detail == f"prefill: reference: fallback from sdpa's fused kernels to the reference path: {NO_KERNEL}"


def test_bench_paths_say_what_ran_and_every_fallback_reaches_the_markdown_note(monkeypatch):
    ops = CudaOps(torch.device("cpu"), torch.float32)
    q = k = v = torch.randn(1, 2, 6, 8)
    blocked = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    ops.attention(q, k, v, blocked, 1.0)
    runner = SimpleNamespace(ops=ops)
    stepper = SimpleNamespace(reason="decode steps replay a CUDA graph", fallback="")
    paths, fallback = ran_paths(runner, [stepper])
    assert paths.startswith("prefill: sdpa: torch SDPA") and paths.endswith("steps: decode steps replay a CUDA graph")
    assert fallback == ""
    monkeypatch.setattr(torch_cuda_ops, "run_sdpa", no_sdpa_kernel)
    ops.attention(q, k, v, blocked, 1.0)
    stepper.fallback = "graph capture failed, later steps run eagerly: RuntimeError: boom"
    paths, fallback = ran_paths(runner, [stepper])
    assert "prefill: reference: fallback from sdpa" in paths
    assert fallback == f"prefill: sdpa fell back to the reference path: {NO_KERNEL}; steps: {stepper.fallback}"

    row = Row("cuda", "fp16", "none", 1, 1, "tg4", 0, paths=paths, fallback=fallback, tokens_per_s=1.0)
    row.tokens_per_s_std = 0.0
    text = render_report(META, [row], ReportFormat.md, "cuda", "transformers")
    assert f"fallback: prefill: sdpa fell back to the reference path: {NO_KERNEL}" in text
    assert '"fallback": "prefill: sdpa fell back' in render_report(META, [row], ReportFormat.json, "cuda", "-")


def test_a_runner_without_recorded_paths_reports_only_its_steps():
    cpu_steps = SimpleNamespace(reason="cpu steps run eagerly (no device graphs on this backend)")
    assert ran_paths(SimpleNamespace(ops=object()), [cpu_steps]) == (f"steps: {cpu_steps.reason}", "")
    assert ran_paths(SimpleNamespace(), []) == ("", "")


def test_a_conformance_row_keeps_a_fallback_that_a_later_call_of_the_case_ran_past(monkeypatch):
    case = prefill_case()
    table = CudaOps(torch.device("cpu"), torch.float32)
    inputs = case.make_inputs(torch.Generator().manual_seed(0))
    run_once = type(case).run

    def run_twice(self, table, prepared):  # the first call falls back, the second runs SDPA: the path shows the second
        with monkeypatch.context() as patch:
            patch.setattr(torch_cuda_ops, "run_sdpa", no_sdpa_kernel)
            run_once(self, table, prepared)
        return run_once(self, table, prepared)

    with monkeypatch.context() as patch:
        patch.setattr(type(case), "run", run_twice)
        status, _, _, detail = run_case(case, table, inputs)
    assert status is Status.PASS and detail.startswith("prefill: sdpa: torch SDPA")
    assert detail.endswith(f"prefill earlier: sdpa fell back to the reference path: {NO_KERNEL}")
    status, _, _, detail = run_case(prefill_case(), table, inputs)  # the next case starts with empty records
    assert "earlier" not in detail
