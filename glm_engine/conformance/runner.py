"""Run the op cases on a backend: ``test`` (against the oracle), ``support`` (the capability matrix) and ``perf``.

Every combination is asked of ``Backend.supports`` first; a refused one becomes a skipped row with the reason and is
never run. A case that raises, returns the wrong shape, dtype or device, holds NaN/inf, or exceeds its NMSE bound
fails; everything else passes.
"""

from __future__ import annotations

import random
import statistics
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch

from glm_engine.backends.base import DTYPE_NAMES, Backend, OpLevelBackend, dtype_name
from glm_engine.backends.registry import REGISTRY
from glm_engine.conformance.cases import PERF_CASES, TEST_CASES, Inputs, OpCase, select
from glm_engine.conformance.oracle import expected_outputs, nmse, to_backend
from glm_engine.conformance.poison import poisoned_allocations
from glm_engine.conformance.thresholds import threshold_for
from glm_engine.errors import BackendError
from glm_engine.ops.interface import Op, OpTable
from glm_engine.quant.formats import QuantFormat

Progress = Callable[[int, int], None]


class Status(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass
class CaseResult:
    """One row of a test run."""

    backend: str
    check: str
    shape: str
    dtype: str
    status: Status
    nmse: float | None = None
    max_nmse: float | None = None
    detail: str = ""
    seed: int | None = None
    seconds: float = 0.0


@dataclass
class SuiteRun:
    backend: str
    device: str
    seed: int
    results: list[CaseResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.status is Status.FAIL]

    @property
    def passed(self) -> bool:
        return not self.failed


def resolve_backend(name: str) -> OpLevelBackend:
    """The op-level backend called ``name``, available here, or a BackendError saying why not."""
    backend, _ = REGISTRY.resolve(name)
    if not isinstance(backend, OpLevelBackend):
        raise BackendError(
            f"{backend.name} is a {backend.kind.value} backend: it runs exported graphs, so it has no ops to test"
        )
    return backend


def new_seed() -> int:
    """A fresh base seed for a run (recorded in the report; pass it back with --seed to repeat the run)."""
    return random.SystemRandom().randrange(2**31)


def case_seed(base_seed: int, case: OpCase, dtype: torch.dtype) -> int:
    """The seed of one case's inputs: fixed by the base seed and the case, whatever else the run selects."""
    return (base_seed * 1_000_003 + zlib.crc32(f"{case.case_id} {dtype_name(dtype)}".encode())) % 2**63


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (the device module's ``synchronize``, whatever the device type)."""
    if device.type != "cpu":
        module = torch.get_device_module(device.type)
        if hasattr(module, "synchronize"):
            module.synchronize()


def _check_outputs(outputs: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], table: OpTable) -> str | None:
    """Why ``outputs`` are malformed (count, shape, dtype, device, NaN/inf), or None."""
    if not isinstance(outputs, tuple) or len(outputs) != len(expected):
        return f"returned {len(outputs) if isinstance(outputs, tuple) else type(outputs).__name__} outputs"
    for index, (out, ref) in enumerate(zip(outputs, expected)):
        where = f"output {index}: " if len(outputs) > 1 else ""
        if tuple(out.shape) != tuple(ref.shape):
            return f"{where}shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
        if out.dtype != table.dtype:
            return f"{where}dtype {out.dtype}, expected {table.dtype}"
        if out.device.type != table.device.type or (
            table.device.index is not None and out.device.index != table.device.index
        ):
            return f"{where}on {out.device}, expected {table.device}"
        finite = torch.isfinite(out)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            return f"{where}{bad} of {out.numel()} values NaN/inf (unwritten output or overflow)"
    return None


# Where an op table keeps the attention path its calls ran, and every fallback (the torch.cuda tables:
# backends/torch_cuda/ops.py); bench reads the same records.
PATH_RECORDS = ("attention_path", "attention_fallbacks")


def _records(table: OpTable) -> list[dict[str, str]]:
    return [r for name in PATH_RECORDS if isinstance(r := getattr(table, name, None), dict)]


def _ran(table: OpTable) -> str:
    """The attention path the case ran, with its reason, and a fallback that a later call of the case ran past (the
    path shows only the last call), where the table records them; "" elsewhere."""
    paths = getattr(table, "attention_path", None)
    if not isinstance(paths, dict):
        return ""
    fallbacks = getattr(table, "attention_fallbacks", None) or {}
    shown = [f"{phase}: {path}" for phase, path in paths.items()]
    shown += [f"{phase} earlier: {why}" for phase, why in fallbacks.items() if "fallback" not in paths.get(phase, "")]
    return "; ".join(shown)


def run_case(case: OpCase, table: OpTable, inputs: Inputs) -> tuple[Status, float | None, float, str]:
    """Run one case on ``table``: (status, nmse, bound, detail); the detail names the attention path that ran."""
    bound = threshold_for(case.check, table.dtype).max_nmse
    expected = expected_outputs(case, inputs, table.dtype)
    for record in _records(table):
        record.clear()  # only this case's calls
    try:
        with torch.no_grad(), poisoned_allocations(table.device):
            prepared = case.prepare(table, to_backend(inputs, table.dtype, table.device))
            outputs = case.run(table, prepared)
            synchronize(table.device)
    except Exception as exc:  # an op that raises is a failed row, not a crashed suite
        return Status.FAIL, None, bound, _joined(f"raised {type(exc).__name__}: {exc}", _ran(table))
    problem = _check_outputs(outputs, expected, table)
    if problem:
        return Status.FAIL, None, bound, _joined(problem, _ran(table))
    error = nmse(outputs, expected)
    if not error <= bound:
        return Status.FAIL, error, bound, _joined(f"NMSE {error:.2e} > {bound:.0e}", _ran(table))
    return Status.PASS, error, bound, _ran(table)


def _joined(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def dtypes_for(backend: Backend, requested: Sequence[torch.dtype] | None) -> list[torch.dtype]:
    """The requested dtypes (asked of ``supports`` like any other), or every dtype the backend computes in."""
    return list(requested) if requested else list(backend.supported_dtypes())


def run_tests(
    backend: OpLevelBackend,
    ops: Sequence[Op] | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    seed: int | None = None,
    cases: Sequence[OpCase] = TEST_CASES,
    device_index: int = 0,
    progress: Progress | None = None,
    table_factory: Callable[[torch.dtype], OpTable] | None = None,
) -> SuiteRun:
    """Every case x dtype on ``backend``. ``table_factory`` replaces ``backend.op_table`` (the self-test uses it)."""
    seed = new_seed() if seed is None else seed
    selected = select(tuple(cases), None if ops is None else list(ops))
    work = [(case, dtype) for case in selected for dtype in dtypes_for(backend, dtypes)]
    run = SuiteRun(backend.name, str(backend.device(device_index)), seed)
    tables: dict[torch.dtype, OpTable] = {}
    for done, (case, dtype) in enumerate(work):
        row = CaseResult(backend.name, case.check, case.shape, dtype_name(dtype), Status.SKIP)
        verdict = backend.supports(case.op, dtype, case.quant_format)
        if not verdict:
            row.detail = verdict.reason
        else:
            if dtype not in tables:
                tables[dtype] = table_factory(dtype) if table_factory else backend.op_table(dtype, device_index)
            row.seed = case_seed(seed, case, dtype)
            inputs = case.make_inputs(torch.Generator().manual_seed(row.seed))
            start = time.perf_counter()
            row.status, row.nmse, row.max_nmse, row.detail = run_case(case, tables[dtype], inputs)
            row.seconds = time.perf_counter() - start
        run.results.append(row)
        if progress is not None:
            progress(done + 1, len(work))
    return run


@dataclass
class SupportRow:
    op: str
    dtype: str
    quant_format: str
    supported: bool
    reason: str


def support_matrix(
    backend: Backend, ops: Sequence[Op] | None = None, dtypes: Sequence[torch.dtype] | None = None
) -> list[SupportRow]:
    """``supports()`` for every op x dtype (all dtypes glm-engine knows unless given), linear also per format."""
    rows = []
    for op in ops or list(Op):
        formats: list[QuantFormat | None] = [None, *QuantFormat] if op is Op.LINEAR else [None]
        for dtype in dtypes or list(DTYPE_NAMES.values()):
            for fmt in formats:
                verdict = backend.supports(op, dtype, fmt)
                rows.append(
                    SupportRow(op.value, dtype_name(dtype), fmt.value if fmt else "-", verdict.ok, verdict.reason)
                )
    return rows


# Perf timing: warm-up calls (compilation, caches), then timed calls until both counts and a time budget are met.
PERF_WARMUP_CALLS = 2
PERF_MIN_CALLS = 5
PERF_MAX_CALLS = 50
PERF_BUDGET_S = 0.5  # per case: stop adding calls after this much time


@dataclass
class PerfRow:
    backend: str
    check: str
    shape: str
    dtype: str
    median_us: float | None
    gbps: float | None
    tflops: float | None
    detail: str = ""


def time_case(case: OpCase, table: OpTable, inputs: Inputs) -> tuple[float, tuple[torch.Tensor, ...]]:
    """Median seconds of one call of ``case`` on ``table`` (inputs already prepared), and the last outputs."""
    outputs = case.run(table, inputs)
    for _ in range(PERF_WARMUP_CALLS - 1):
        case.run(table, inputs)
    synchronize(table.device)
    times: list[float] = []
    deadline = time.perf_counter() + PERF_BUDGET_S
    while len(times) < PERF_MIN_CALLS or (len(times) < PERF_MAX_CALLS and time.perf_counter() < deadline):
        start = time.perf_counter()
        outputs = case.run(table, inputs)
        synchronize(table.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), outputs


def run_perf(
    backend: OpLevelBackend,
    ops: Sequence[Op] | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    cases: Sequence[OpCase] = PERF_CASES,
    device_index: int = 0,
    progress: Progress | None = None,
) -> list[PerfRow]:
    """Median time per op on the backend's device, with achieved GB/s (all ops) and TFLOP/s (GEMM, attention).

    Without ``dtypes`` only the backend's default dtype is timed."""
    selected = select(tuple(cases), None if ops is None else list(ops))
    work = [(case, dtype) for case in selected for dtype in (dtypes or [backend.default_dtype()])]
    rows, tables = [], {}
    for done, (case, dtype) in enumerate(work):
        row = PerfRow(backend.name, case.check, case.shape, dtype_name(dtype), None, None, None)
        verdict = backend.supports(case.op, dtype, case.quant_format)
        if not verdict:
            row.detail = f"skipped: {verdict.reason}"
        else:
            table = tables.setdefault(dtype, backend.op_table(dtype, device_index))
            inputs = case.make_inputs(torch.Generator().manual_seed(0))
            try:
                with torch.no_grad():
                    prepared = case.prepare(table, to_backend(inputs, dtype, table.device))
                    seconds, outputs = time_case(case, table, prepared)
            except Exception as exc:
                row.detail = f"raised {type(exc).__name__}: {exc}"
            else:
                row.median_us = seconds * 1e6
                row.gbps = case.bytes_moved(prepared, outputs) / seconds / 1e9
                row.tflops = case.flops() / seconds / 1e12 if case.flops() else None
                row.detail = case.kernel_detail(table, prepared)
        rows.append(row)
        if progress is not None:
            progress(done + 1, len(work))
    return rows
