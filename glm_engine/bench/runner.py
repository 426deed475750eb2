"""Running a bench plan: load each (backend, dtype, quantization, TP) group once, measure its points, then the
baseline; rows accumulate in a :class:`BenchRun` as they finish, so an interrupted run still has them.

TP > 1 groups run as ranks of torch's launcher (``parallel.launch.launch_local``, as ``glm-engine run --tp N``
does): the ranks get their points in a job file, run them in lockstep (every forward has collectives), and rank 0
appends its rows to a JSON-lines file this process reads back. Under a user's own ``torchrun`` (several nodes), the
command itself is a rank: points at TP = world size run, others are reported as skipped.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from glm_engine.backends.registry import REGISTRY
from glm_engine.errors import GlmEngineError, InputError
from glm_engine.parallel.communicator import Communicator
from glm_engine.parallel.degree import check_tp_degree

from .baseline import BASELINE_NAME, BaselinePlan, plan_baseline, run_baseline
from .chatglm_cpp import compare, ggml_points
from .measure import Measurement, Sample, measure
from .models import LoadedModel, ModelSource, Shape, backend_device, resolve_model
from .roofline import measure_read_bandwidth
from .rows import FAILED, Row, row_from_measurement, skipped_row
from .spec import Point, QuantChoice, context_length, point_from_json, point_to_json
from .workload import build_workload

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class BenchOptions:
    repetitions: int = 5
    warmup: int = 1
    seed: int = 1234
    baseline: bool = True
    baseline_python: str | None = None
    baseline_code: Path | None = None
    bandwidth_gib: float = 1.0  # 0 skips the bandwidth measurement (no roofline share)
    chatglm_cpp: Path | None = None  # --compare-chatglm-cpp: chatglm.cpp's package folder or interpreter
    chatglm_cpp_python: str | None = None  # the interpreter that runs a package folder (default: this one)


@dataclass
class BenchRun:
    """What a run has produced so far: rows, the devices and their measured bandwidth, notes."""

    rows: list[Row] = field(default_factory=list)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    baseline_versions: str = ""
    chatglm_cpp_version: str = ""


def check_plan(source: ModelSource, points: Sequence[Point]) -> None:
    """Refuse points whose sequence does not fit the model, TP degrees that cannot split it (heads, key/value groups,
    vocabulary rows, MLP units), and unknown backends, before anything runs."""
    too_long = [p for p in points if p.tokens_needed() > source.max_sequence_length]
    if too_long:
        worst = max(too_long, key=lambda p: p.tokens_needed())
        raise InputError(
            f"{worst.label} needs {worst.tokens_needed()} positions; {source.description} has "
            f"{source.max_sequence_length}: use shorter tests or a smaller --depth"
        )
    for tp in dict.fromkeys(p.tp for p in points):
        check_tp_degree(source.config, tp, source.description)  # ParallelError listing the degrees that fit
    for name in dict.fromkeys(p.backend for p in points):
        REGISTRY.resolve(name)  # BackendError: unknown or unavailable, with the reason


# What torch's allocators say when memory runs out (CUDA raises OutOfMemoryError; the CPU one a RuntimeError).
OUT_OF_MEMORY_MESSAGES = ("out of memory", "can't allocate memory")


def _out_of_memory(exc: RuntimeError) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or any(m in str(exc).lower() for m in OUT_OF_MEMORY_MESSAGES)


def _groups(points: Sequence[Point]) -> list[tuple[tuple, list[Point]]]:
    return [(key, list(group)) for key, group in itertools.groupby(points, key=lambda p: p.load_key)]


def _device_entry(
    backend: str, run: BenchRun, options: BenchOptions, leader: bool, dtypes: Sequence[str] = ("fp32",)
) -> dict[str, Any]:
    """The backend's device, with its read bandwidth measured once per run (rank 0 only; GEMVs in ``dtypes``)."""
    if backend not in run.devices:
        chosen, _ = REGISTRY.resolve(backend)
        devices = chosen.devices()
        entry: dict[str, Any] = {
            "backend": chosen.name,
            "name": devices[0].name if devices else backend,
            "detail": devices[0].detail if devices else "",
        }
        if leader and options.bandwidth_gib > 0:
            measured = measure_read_bandwidth(backend_device(backend), options.bandwidth_gib, dtypes)
            entry["read_bandwidth_gbps"] = measured.gbps
            entry["read_bandwidth_kernel"] = measured.kernel
            entry["read_bandwidth_kernels"] = measured.kernels
            entry["probe_buffer_bytes"] = measured.buffer_bytes
            entry["last_level_cache_bytes"] = measured.cache_bytes
        run.devices[backend] = entry
    return run.devices[backend]


def _stepper(loaded: LoadedModel, steps: int, made: list[Any]) -> Callable[[], Any]:
    """Decode steps as generation runs them: the runner's own stepper (device graphs where its backend replays them),
    kept in ``made`` so the row can say how the steps ran."""

    def make() -> Any:
        made.append(loaded.runner.decode_stepper(steps, None))
        return made[-1]

    return make


# Where an op table keeps what its attention calls ran (the torch.cuda tables: backends/torch_cuda/ops.py).
PATH_RECORDS = ("attention_path", "attention_fallbacks")


def _records(runner: Any) -> dict[str, dict[str, str]]:
    ops = getattr(runner, "ops", None)
    return {name: r for name in PATH_RECORDS if isinstance(r := getattr(ops, name, None), dict)}


def ran_paths(runner: Any, steppers: Sequence[Any]) -> tuple[str, str]:
    """What ran during a point (the attention path of each phase with its reason, how decode steps ran) and why a
    path fell back ("" when none did), from the op table's records and the stepper's ``reason``/``fallback``."""
    records = _records(runner)
    parts = [f"{phase}: {path}" for phase, path in records.get("attention_path", {}).items()]
    fallbacks = [f"{phase}: {why}" for phase, why in records.get("attention_fallbacks", {}).items()]
    for stepper in steppers[-1:]:
        parts.append(f"steps: {stepper.reason}")
        if getattr(stepper, "fallback", ""):
            fallbacks.append(f"steps: {stepper.fallback}")
    return "; ".join(parts), "; ".join(fallbacks)


def _forget_paths(runner: Any) -> None:
    """Empty the op table's records, so a row reports only what ran for its own point."""
    for record in _records(runner).values():
        record.clear()


def _run_group(
    source: ModelSource,
    points: list[Point],
    options: BenchOptions,
    run: BenchRun,
    comm: Communicator | None,
    progress: Callable[[str], None],
    on_row: Callable[[Row], None],
) -> None:
    """Load once, measure every point of one group; a load the backend refuses skips the group with its reason."""
    first = points[0]
    leader = comm is None or comm.is_leader
    device = _device_entry(first.backend, run, options, leader, [p.dtype for p in points])
    try:
        loaded = source.load(first.backend, first.dtype, first.quant, first.tp, comm)
    except GlmEngineError as exc:
        for point in points:
            on_row(skipped_row(first.backend, point, str(exc), device=device.get("name", "")))
            progress(point.label)
        return
    for note in loaded.notes:
        if note not in run.notes and leader:
            run.notes.append(note)
    for point in points:
        steppers: list[Any] = []
        _forget_paths(loaded.runner)
        try:
            work = build_workload(
                source.family,
                source.config,
                point.batch,
                context_length(point),
                point.tokens_needed(),
                source.text_ids,
                options.seed,
            )
            make_stepper = _stepper(loaded, point.test.n_gen, steppers)
            result = measure(loaded.runner, work, point, options.repetitions, options.warmup, make_stepper)
        except RuntimeError as exc:  # a point too large for the device fails alone; the plan goes on
            if not _out_of_memory(exc):
                raise
            reason = f"out of memory at batch {point.batch}, {point.tokens_needed()} tokens: use a smaller --batch"
            on_row(skipped_row(first.backend, point, reason, FAILED, device=device.get("name", "")))
            progress(point.label)
            continue
        row = row_from_measurement(
            first.backend,
            point,
            result,
            loaded.weight_bytes,
            device.get("read_bandwidth_gbps"),
            loaded.device_name,
            cache_bytes=device.get("last_level_cache_bytes"),
            kv_bytes_per_token=loaded.kv_bytes_per_token,
        )
        row.paths, row.fallback = ran_paths(loaded.runner, steppers if point.test.n_gen else [])
        on_row(row)
        progress(point.label)
    del loaded


def run_plan(
    source: ModelSource,
    shape: Shape,
    points: Sequence[Point],
    options: BenchOptions,
    run: BenchRun,
    progress: Progress | None = None,
) -> None:
    """Measure every point, then the baseline, then chatglm.cpp; rows are appended to ``run`` as they finish."""
    baseline_points = _baseline_points(points) if options.baseline else {}
    ggml = ggml_points(points) if options.chatglm_cpp is not None else []
    total = len(points) + sum(len(group) for group in baseline_points.values()) + len(ggml)
    done = 0

    def advance(label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, label)

    for backend in dict.fromkeys(p.backend for p in points):  # the GEMV of the bandwidth probe in each dtype used
        _device_entry(backend, run, options, True, [p.dtype for p in points if p.backend == backend])
    for (_, _, _, tp), group in _groups(points):
        if tp > 1:
            _run_tp_group(source, shape, group, options, run, advance)
        else:
            _run_group(source, group, options, run, None, advance, run.rows.append)
    if baseline_points:
        _run_baselines(source, baseline_points, options, run, advance)
    if options.chatglm_cpp is not None:
        _run_chatglm_cpp(source, points, options, run, advance)


def _run_chatglm_cpp(
    source: ModelSource, points: Sequence[Point], options: BenchOptions, run: BenchRun, advance: Callable[[str], None]
) -> None:
    """chatglm.cpp next to our CPU rows at TP=1 (``chatglm_cpp.compare``); a plan without such rows says so."""
    if not ggml_points(points):
        run.notes.append(
            "chatglm.cpp is compared with the CPU backend's rows at TP=1 and this plan has none: add --backend cpu"
        )
        return
    assert options.chatglm_cpp is not None
    cpu = next(b for b in dict.fromkeys(p.backend for p in points) if backend_device(b).type == "cpu")
    protocol = (options.repetitions, options.warmup, options.seed)
    run.chatglm_cpp_version = compare(
        source,
        points,
        options.chatglm_cpp,
        options.chatglm_cpp_python,
        protocol,
        run.devices.get(cpu, {}),
        run.rows.append,
        advance,
    )


# Device types transformers' ChatGLM code runs on here (ROCm is "cuda" to torch); other devices' rows are skipped.
BASELINE_DEVICE_TYPES = ("cpu", "cuda")


def _baseline_points(points: Sequence[Point]) -> dict[str, list[Point]]:
    """Per backend whose device the baseline is to run on (the first backend on each device), one floating-point
    TP=1 point per (dtype, batch, depth, test) of that device's rows: ours compare with transformers on their own
    device only."""
    devices: dict[str, str] = {}  # device -> the first backend on it
    seen: dict[tuple, Point] = {}
    for p in points:
        device = str(backend_device(p.backend))
        first = devices.setdefault(device, p.backend)
        key = (first, p.dtype, p.batch, p.depth, p.test)
        seen.setdefault(key, Point(BASELINE_NAME, p.dtype, QuantChoice(), 1, p.batch, p.depth, p.test))
    by_backend: dict[str, list[Point]] = {}
    for (backend, *_), point in seen.items():
        by_backend.setdefault(backend, []).append(point)
    return by_backend


def _run_baselines(
    source: ModelSource,
    points: dict[str, list[Point]],
    options: BenchOptions,
    run: BenchRun,
    advance: Callable[[str], None],
) -> None:
    """The baseline on each device of the plan (``points`` per backend whose device it is), after ours."""
    plan = plan_baseline(source, options.baseline_python, options.baseline_code)
    for backend, device_points in points.items():
        device = backend_device(backend)
        entry = run.devices.get(backend, {})
        name = entry.get("name", str(device))
        reason = plan.skipped
        if not reason and device.type not in BASELINE_DEVICE_TYPES:
            reason = (
                f"the transformers baseline runs on {' and '.join(BASELINE_DEVICE_TYPES)} here, not on {backend}'s "
                f"device {device}"
            )
        if reason:
            for point in device_points:
                run.rows.append(skipped_row(BASELINE_NAME, point, reason, device=name))
                advance(point.label)
            continue
        run.baseline_versions = plan.versions
        _run_baseline(plan, device, name, entry, device_points, options, run, advance)


def _run_baseline(
    plan: BaselinePlan,
    device: torch.device,
    device_name: str,
    entry: dict[str, Any],
    points: list[Point],
    options: BenchOptions,
    run: BenchRun,
    advance: Callable[[str], None],
) -> None:
    """The baseline's points on one device, in its interpreter; each record becomes a row as it arrives."""
    pending = {json.dumps(point_to_json(p), sort_keys=True): p for p in points}

    def on_result(record: dict) -> None:
        if "point" not in record:  # the process failed: every point not reported yet fails with its message
            for point in pending.values():
                run.rows.append(skipped_row(BASELINE_NAME, point, record["error"], FAILED, device=device_name))
                advance(point.label)
            pending.clear()
            return
        point = pending.pop(json.dumps(record["point"], sort_keys=True))
        if "error" in record:  # this point (its dtype) failed; the others go on
            run.rows.append(skipped_row(BASELINE_NAME, point, record["error"], FAILED, device=device_name))
            advance(point.label)
            return
        samples = [Sample(**s) for s in record["samples"]]
        result = Measurement(
            samples,
            record["host_peak_bytes"],
            record["device_peak_bytes"],
            record["timer"],
            record.get("process_peak_bytes"),
        )
        run.rows.append(
            row_from_measurement(
                BASELINE_NAME,
                point,
                result,
                record["weight_bytes"],
                entry.get("read_bandwidth_gbps"),
                device_name,
                cache_bytes=entry.get("last_level_cache_bytes"),
                kv_bytes_per_token=record.get("kv_bytes_per_token"),
            )
        )
        advance(point.label)

    run_baseline(
        plan,
        points,
        str(device),
        options.repetitions,
        options.warmup,
        options.seed,
        torch.get_num_threads(),
        on_result,
    )


# --- tensor parallelism ----------------------------------------------------------------------------------------------


def _run_tp_group(
    source: ModelSource,
    shape: Shape,
    points: list[Point],
    options: BenchOptions,
    run: BenchRun,
    advance: Callable[[str], None],
) -> None:
    """Run one TP > 1 group as ranks of torch's launcher and collect rank 0's rows (Ctrl-C stays a KeyboardInterrupt:
    ``launch_local`` raises the signal again under this process's handlers)."""
    from glm_engine.parallel.launch import launch_local

    tp = points[0].tp
    _device_entry(points[0].backend, run, options, leader=True)  # measured here once; the ranks reuse it
    with tempfile.TemporaryDirectory(prefix="glm-engine-bench-tp-") as tmp:
        job, out = Path(tmp) / "job.json", Path(tmp) / "rows.jsonl"
        job.write_text(
            json.dumps(
                {
                    "model": source.name if not source.random else f"random:{source.name}",
                    "shape": asdict(shape),
                    "points": [point_to_json(p) for p in points],
                    "options": {
                        **asdict(options),
                        "baseline": False,
                        "baseline_code": None,
                        "chatglm_cpp": None,
                    },
                    "devices": run.devices,
                }
            ),
            encoding="utf-8",
        )
        out.touch()
        failed = ""
        try:
            launch_local(tp, ["bench", "--tp-job", str(job), "--tp-rows", str(out)])
        except GlmEngineError as exc:
            failed = str(exc)
        finally:
            finished = [Row(**json.loads(line)) for line in out.read_text(encoding="utf-8").splitlines()]
            run.rows.extend(finished)
            for row in finished:
                advance(f"{row.test} @ d{row.depth}")
        done = {(r.batch, r.test, r.depth) for r in finished}
        for point in points:
            if (point.batch, point.test.name, point.depth) not in done:
                run.rows.append(skipped_row(point.backend, point, failed or "the rank did not report", FAILED))
                advance(point.label)


def run_tp_job(job_path: Path, rows_path: Path, comm: Communicator) -> None:
    """One rank of a TP group (see the module docstring); rank 0 appends each row to ``rows_path``."""
    job = json.loads(job_path.read_text(encoding="utf-8"))
    options = BenchOptions(**job["options"])
    source = resolve_model(job["model"], Shape(**job["shape"]))
    points = [point_from_json(p) for p in job["points"]]
    run = BenchRun(devices=job["devices"])

    def write(row: Row) -> None:
        if comm.is_leader:
            with rows_path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(row.to_dict()) + "\n")

    _run_group(source, points, options, run, comm, lambda label: None, write)


def run_as_torchrun_rank(
    source: ModelSource, points: Sequence[Point], options: BenchOptions, run: BenchRun, comm: Communicator
) -> None:
    """Under a user's torchrun: measure the points at TP = world size; the others are listed as skipped."""
    for (_, _, _, tp), group in _groups(points):
        if tp != comm.world_size:
            reason = f"under torchrun with {comm.world_size} ranks only TP={comm.world_size} points run"
            run.rows.extend(skipped_row(p.backend, p, reason) for p in group)
            continue
        _run_group(source, group, options, run, comm, lambda label: None, run.rows.append)
    if not comm.is_leader:
        run.rows.clear()
