"""The CPU linear kernels chosen by measuring (docs/cpu-kernels.md): every candidate's numerics, the trial's choice
under a fake clock, the cache and the modes. Nothing here times a real kernel."""

from __future__ import annotations

import json

import pytest
import torch

from glm_engine.backends.cpu import kernel_chooser, kernel_trial
from glm_engine.backends.cpu.kernel_choice import (
    CANDIDATES,
    MODE_ENV,
    RowClass,
    candidates_for,
    kernel_mode,
    onednn_disabled,
    row_class,
)
from glm_engine.backends.cpu.kernel_chooser import KernelChooser
from glm_engine.backends.cpu.kernel_trial import ChoiceCache, TrialItem, TrialResult, cache_path, run_trial
from glm_engine.backends.cpu.ops import CpuOps
from glm_engine.errors import InputError
from tests.bounds import max_nmse, nmse

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


APPLICABLE = [
    (name, dtype, rows, with_bias)
    for name, candidate in CANDIDATES.items()
    for dtype in DTYPES
    for rows in (1, 4, 17)
    for with_bias in (False, True)
    if candidate.applies(row_class(rows), dtype, with_bias)
]


@pytest.mark.parametrize(("name", "dtype", "rows", "with_bias"), APPLICABLE)
def test_every_candidate_stays_within_the_linear_bound(name, dtype, rows, with_bias):
    """Whichever candidate a trial picks, the product is F.linear's shape and dtype, within the conformance bound of
    a linear in that dtype against the float64 product."""
    candidate = CANDIDATES[name]
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(1, rows, 96, generator=gen).to(dtype)
    weight = torch.randn(40, 96, generator=gen).to(dtype)
    bias = torch.randn(40, generator=gen).to(dtype) if with_bias else None
    out = candidate.run(x, weight, bias)
    assert out.shape == (1, rows, 40) and out.dtype == dtype
    exact = torch.nn.functional.linear(x.double(), weight.double(), None if bias is None else bias.double())
    assert nmse(out, exact) <= max_nmse("linear", dtype)


def test_every_row_class_has_candidates_and_only_one_row_products_use_mv():
    for rows in RowClass:
        for dtype in DTYPES:
            names = [c.name for c in candidates_for(rows, dtype, True)]
            assert "linear" in names and "linear/no-onednn" in names
            assert any("mv" in n for n in names) is (rows is RowClass.ONE)
    assert "mv+bias" not in [c.name for c in candidates_for(RowClass.ONE, torch.bfloat16, False)]


def test_onednn_is_off_inside_and_restored_after():
    before = torch.backends.mkldnn.enabled
    with onednn_disabled():
        assert torch.backends.mkldnn.enabled is False
    assert torch.backends.mkldnn.enabled == before
    with pytest.raises(RuntimeError), onednn_disabled():
        raise RuntimeError("restored even when the call fails")
    assert torch.backends.mkldnn.enabled == before
    outer, inner = onednn_disabled(), onednn_disabled()  # two threads' calls overlapping: A in, B in, A out, B out
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)
    assert torch.backends.mkldnn.enabled is False  # B is still inside
    inner.__exit__(None, None, None)
    assert torch.backends.mkldnn.enabled == before  # not B's saved False


class FakeClock:
    """A clock that only moves when a fake kernel says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[tuple[str, str]] = []

    def __call__(self) -> float:
        return self.now

    def kernel(self, item: str, name: str, seconds: list[float]):
        def run() -> None:
            self.calls.append((item, name))
            self.now += seconds.pop(0) if len(seconds) > 1 else seconds[0]

        return run


def test_the_trial_interleaves_prunes_the_slow_and_picks_the_minimum():
    clock = FakeClock()
    times = {
        "a": {"fast": [5.0, 1.0], "steady": [2.0], "slow": [20.0]},  # fast wins by its minimum, not its first call
        "b": {"fast": [3.0], "steady": [2.0], "slow": [9.0]},
    }
    items = [
        TrialItem(key, 2_000_000_000, {n: clock.kernel(key, n, list(t)) for n, t in per.items()})
        for key, per in times.items()
    ]
    results = run_trial(items, rounds=3, clock=clock)
    assert [r.winner for r in results] == ["fast", "steady"]
    assert results[0].gbps() == pytest.approx(2.0)  # 2 GB in the best 1.0 s
    # one name at a time over every item, so consecutive calls read different weights
    assert clock.calls[:6] == [(i, n) for n in ("fast", "steady", "slow") for i in ("a", "b")]
    # slow is over 4x a's best after round one and not timed again there; on b (9 vs 2) it is 4.5x too
    assert clock.calls.count(("a", "slow")) == 1 and clock.calls.count(("b", "slow")) == 1
    assert clock.calls.count(("a", "fast")) == 3


def _weights(dtype=torch.bfloat16):
    gen = torch.Generator().manual_seed(0)
    return [
        ("qkv", torch.randn(48, 32, generator=gen).to(dtype), torch.randn(48, generator=gen).to(dtype)),
        ("output", torch.randn(64, 32, generator=gen).to(dtype), None),
    ]


class CountingClock:
    """Every reading one second later: each timed call takes 1 s, so the first candidate of a tie wins."""

    def __init__(self) -> None:
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        return float(self.readings)


def test_auto_runs_a_trial_once_then_uses_the_cache(tmp_path):
    path = tmp_path / "glm-engine" / "cpu-kernels.json"
    clock = CountingClock()
    first = KernelChooser("auto", path, clock)
    notes = first.prepare(_weights())
    assert clock.readings > 0 and path.exists()
    assert any("1 row: qkv 48x32" in n and "(trial" in n for n in notes)
    stored = json.loads(path.read_text())["machines"]
    record = stored[kernel_trial.machine_id(kernel_trial.machine_fingerprint())]
    assert record["machine"] == kernel_trial.machine_fingerprint()
    assert record["choices"]["dense|bfloat16|1 row|48x32+bias"]["kernel"] in CANDIDATES

    again = CountingClock()
    second = KernelChooser("auto", path, again)
    second.prepare(_weights())
    assert again.readings == 0  # every choice came from the cache
    assert {k: c.candidate.name for k, c in second.choices.items()} == {
        k: c.candidate.name for k, c in first.choices.items()
    }
    assert {c.source for c in second.choices.values()} == {"cached trial"}

    fresh = CountingClock()
    KernelChooser("trial", path, fresh).prepare(_weights())
    assert fresh.readings > 0  # trial ignores the cache


def test_a_cache_from_another_machine_is_ignored_and_kept(tmp_path):
    path = tmp_path / "cpu-kernels.json"
    other = dict(kernel_trial.machine_fingerprint(), threads=99)
    record = {"machine": other, "choices": {"dense|x": {"kernel": "addmv", "gbps": 1.0}}}
    path.write_text(json.dumps({"machines": {kernel_trial.machine_id(other): record}}))
    cache = ChoiceCache(path)
    assert cache.entries == {}
    cache.update([TrialResult("dense|k", 1_000_000_000, {"linear": 0.5})])
    machines = json.loads(path.read_text())["machines"]
    assert machines[kernel_trial.machine_id(other)] == record  # another thread count's trial is not undone
    assert ChoiceCache(path).get("dense|k")["kernel"] == "linear"
    path.write_text(json.dumps({"machine": other, "choices": {}}))  # the first format: stale, ignored
    assert ChoiceCache(path).entries == {}
    path.write_text("{not json")
    assert ChoiceCache(path).entries == {}


def test_the_cache_is_written_whole_with_no_temporary_left(tmp_path):
    cache = ChoiceCache(tmp_path / "sub" / "cpu-kernels.json")
    result = TrialResult("dense|k", 1_000_000_000, {"linear": 0.5, "addmv": 0.25})
    cache.update([result])
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["cpu-kernels.json"]
    entry = ChoiceCache(cache.path).get("dense|k")
    assert entry == {"kernel": "addmv", "gbps": 4.0, "candidates": {"linear": 2.0, "addmv": 4.0}}


def test_the_cache_lives_under_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_path() == tmp_path / "glm-engine" / "cpu-kernels.json"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert cache_path().parts[-3:] == (".cache", "glm-engine", "cpu-kernels.json")


def _no_clock() -> float:
    raise AssertionError("nothing may be timed in this mode")


def test_off_takes_the_fixed_defaults_without_timing(tmp_path):
    chooser = KernelChooser("off", tmp_path / "unused.json", _no_clock)
    notes = chooser.prepare(_weights())
    weight = torch.zeros(8, 8, dtype=torch.float16)
    assert chooser.dense(1, weight, None).name == "linear"
    assert chooser.dense(9, weight, None).name == "linear-fp32"  # torch's CPU fp16 GEMM is slow for many rows
    assert chooser.dense(9, weight.bfloat16(), None).name == "linear"
    assert not (tmp_path / "unused.json").exists()
    assert notes[0].startswith("cpu linear kernels (GLM_ENGINE_CPU_KERNELS=off) on ")
    assert len(notes) == 1 and notes[0].endswith(kernel_chooser.FIXED_RULE)


def test_a_forced_kernel_runs_where_it_applies_and_the_default_elsewhere(tmp_path):
    chooser = KernelChooser("mv+bias/no-onednn", tmp_path / "unused.json", _no_clock)
    weight, bias = torch.zeros(8, 8, dtype=torch.bfloat16), torch.zeros(8, dtype=torch.bfloat16)
    assert chooser.choice_for(1, weight, bias).describe() == "mv+bias/no-onednn (forced)"
    assert chooser.choice_for(1, weight, None).describe() == "linear (default: forced kernel n/a)"
    assert chooser.dense(4, weight, bias).name == "linear"


def test_the_mode_variable_is_checked(monkeypatch):
    monkeypatch.setenv(MODE_ENV, "fastest")
    with pytest.raises(InputError, match="addmv/no-onednn"):
        kernel_mode()
    monkeypatch.setenv(MODE_ENV, "")
    assert kernel_mode() == "auto"


def test_cpu_ops_run_the_kernel_the_variable_names(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 32, generator=gen).bfloat16()
    weight, bias = torch.randn(48, 32, generator=gen).bfloat16(), torch.randn(48, generator=gen).bfloat16()
    monkeypatch.setenv(MODE_ENV, "mv+bias")
    ops = CpuOps(torch.device("cpu"), torch.bfloat16)
    assert torch.equal(ops.linear(x, weight, bias).reshape(-1), torch.mv(weight, x.reshape(-1)) + bias)
    assert ops.linear_kernel(1, weight, bias) == "mv+bias (forced)"
    monkeypatch.setenv(MODE_ENV, "off")
    assert kernel_chooser.chooser().mode == "off"  # a changed variable takes a new chooser
    assert ops.linear_kernel(1, weight, bias) == "linear (off)"


def test_perf_rows_and_load_notes_name_the_cpu_kernel(monkeypatch):
    from glm_engine import load
    from glm_engine.backends.cpu import CpuBackend
    from glm_engine.conformance.cases import LinearCase
    from glm_engine.conformance.runner import run_perf

    monkeypatch.setenv(MODE_ENV, "off")  # whatever the suite runs with
    case = LinearCase(1, 64, 48, bias=True)
    (row,) = run_perf(CpuBackend(), dtypes=[torch.bfloat16], cases=(case,))
    assert row.detail == "linear (off)" and row.gbps is not None
    quantized = LinearCase(1, 64, 48, bits=8)
    assert run_perf(CpuBackend(), dtypes=[torch.bfloat16], cases=(quantized,))[0].detail.startswith("Int8Rowwise")
    notes = load("glm-tiny", backend="cpu", dtype="bf16").notes
    assert any(n.startswith(f"cpu linear kernels ({MODE_ENV}=off) on ") for n in notes)
    assert f"linear in bf16: {kernel_chooser.FIXED_RULE} ({MODE_ENV}=off; docs/cpu-kernels.md)" in notes


def test_quantized_kernels_are_measured_once_and_reported(tmp_path):
    from glm_engine.backends.cpu.quant_linear import prepare_cpu_quantized
    from glm_engine.quant.weight import QuantizedWeight

    weight = torch.randn(48, 64, generator=torch.Generator().manual_seed(0))
    packed = prepare_cpu_quantized(QuantizedWeight.quantize(weight, 8, None))
    linears = [("qkv", packed, None)]
    path = tmp_path / "cpu-kernels.json"
    clock = CountingClock()
    notes = KernelChooser("auto", path, clock).prepare(linears)
    assert clock.readings > 0
    gbps = packed.nbytes / 1.0 / 1e9  # each fake call takes one second
    assert notes[-1].endswith(f"quantized qkv: Int8RowwiseLinear {gbps:.3g} GB/s (one row, the format's only kernel)")
    again = CountingClock()
    assert KernelChooser("auto", path, again).prepare(linears)[-1] == notes[-1]
    assert again.readings == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", [c.name for c in candidates_for(RowClass.FEW, torch.float32, True)])
def test_a_row_in_a_serving_tile_does_not_depend_on_its_tile_mates(name, dtype):
    """Serving runs every product in tiles of 8 rows (serving/row_tiled.py, docs/serving.md#batch-invariance): a
    row's result must not depend on the other rows of its tile, whichever candidate the trial picked for 8 rows."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(96, 256, generator=gen).to(dtype)
    bias = torch.randn(96, generator=gen).to(dtype)
    row = torch.randn(1, 256, generator=gen)
    tiles = [torch.cat((row, torch.randn(7, 256, generator=gen) * scale)).to(dtype) for scale in (1.0, 100.0)]
    first, second = (CANDIDATES[name].run(tile, weight, bias)[0] for tile in tiles)
    assert torch.equal(first, second)
