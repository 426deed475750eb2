"""``glm-engine bench``: llama-bench-style prefill/generation speed over the product of every parameter list, with
TTFT, inter-token latency, peak memory, decode GB/s against the measured roofline, and a transformers baseline."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from torch.distributed.elastic.multiprocessing.errors import record

from glm_engine.backends.base import GraphLevelBackend, dtype_name, parse_dtype
from glm_engine.backends.registry import REGISTRY
from glm_engine.bench.baseline import BASELINE_NAME
from glm_engine.bench.chatglm_cpp import ENGINE as CHATGLM_CPP
from glm_engine.bench.chatglm_cpp import add_chatglm_cpp_ratios
from glm_engine.bench.device import host_peak_note
from glm_engine.bench.environment import environment
from glm_engine.bench.models import (
    ModelSource,
    Shape,
    common_dtype,
    dtype_or_default,
    resolve_model,
    supported_dtype_names,
)
from glm_engine.bench.plot import check_plot_available, write_plot
from glm_engine.bench.report import ReportFormat, render_report
from glm_engine.bench.rows import add_ratios
from glm_engine.bench.runner import BenchOptions, BenchRun, check_plan, run_as_torchrun_rank, run_plan, run_tp_job
from glm_engine.bench.spec import Point, expand, parse_ints, parse_quant, parse_tests, split_values
from glm_engine.checkpoint.atomic import write_atomically
from glm_engine.cli.errors import user_errors
from glm_engine.cli.option_checks import refuse_empty
from glm_engine.cli.output_paths import check_output_file
from glm_engine.cli.progress import progress_bar
from glm_engine.errors import InputError
from glm_engine.exported import exported_backend, refuse_exported_folder
from glm_engine.generation.option_types import check_seed
from glm_engine.parallel.communicator import init_from_environment, running_under_torchrun

DEFAULT_TESTS = "pp128,tg32"  # llama-bench's pp512/tg128 take minutes per row on a small CPU
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what shells report for Ctrl-C
ListOption = list[str] | None


def _emit(text: str, out: Path | None) -> None:
    print(text)
    if out is not None:
        write_atomically(out, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def _check_paths(
    out: Path | None,
    plot: Path | None,
    baseline: bool,
    baseline_python: str | None,
    baseline_code: Path | None,
    chatglm_cpp: Path | None,
    chatglm_cpp_python: str | None,
) -> None:
    """The files the report goes to can be written, and the helpers named exist, before anything is measured."""
    for path, flag in ((out, "--out"), (plot, "--plot")):
        if path is not None:
            check_output_file(path, flag)
    interpreters = [("--baseline-python", baseline_python if baseline else None)]
    interpreters.append(("--chatglm-cpp-python", chatglm_cpp_python if chatglm_cpp is not None else None))
    for flag, python in interpreters:
        if python is not None and shutil.which(python) is None:
            raise InputError(f"{flag} {python}: no such interpreter (give its path, or a command on PATH)")
    if baseline and baseline_code is not None and not baseline_code.is_dir():
        raise InputError(f"--baseline-code {baseline_code} is not a folder; give the folder with modeling_chatglm.py")
    if chatglm_cpp is not None and not chatglm_cpp.exists():
        raise InputError(
            f"--compare-chatglm-cpp {chatglm_cpp} does not exist; give chatglm.cpp's chatglm_cpp package folder or "
            "an interpreter that imports it"
        )


@record
def _tp_rank(job: Path, rows: Path) -> None:
    """One rank of a TP group started by ``bench`` itself (``@record`` hands its error to the launcher)."""
    import json

    backend = json.loads(job.read_text(encoding="utf-8"))["points"][0]["backend"]
    comm = init_from_environment(REGISTRY.resolve(backend)[0])
    try:
        run_tp_job(job, rows, comm)
    finally:
        comm.close()


def _points(
    backends: list[str],
    model_dtype: str | None,
    dtype: ListOption,
    quant: ListOption,
    quant_scheme: ListOption,
    quant_group_size: ListOption,
    quant_output: ListOption,
    tp: ListOption,
    batch: ListOption,
    depth: ListOption,
    test: ListOption,
) -> tuple[list[Point], list[str]]:
    """The product of the lists, per backend (whose default dtype differs), checked as it is parsed; with the notes
    on how the dtype was chosen when ``--dtype`` was not given to several backends."""
    dtypes = _dtypes(dtype)
    notes: list[str] = []
    if not dtypes and model_dtype is None and len(backends) > 1:
        common = common_dtype({name: supported_dtype_names(name) for name in backends})
        if common is not None:
            dtypes = [common]
            notes.append(
                f"no --dtype given: every backend runs {common}, a dtype {', '.join(backends)} all support, so "
                f"the vs {backends[0]} ratios compare like with like"
            )
        else:
            notes.append(
                f"no --dtype given and {', '.join(backends)} share no dtype: each runs its own default, so there "
                f"are no vs {backends[0]} ratios; pass --dtype to compare them"
            )
    points: list[Point] = []
    for name in backends:
        points += expand(
            [name],
            dtypes or [model_dtype or dtype_or_default(name, None)],
            parse_quant(quant or [], quant_scheme or [], quant_group_size or [], quant_output or []),
            parse_ints(tp, "--tp", 1) or [1],
            parse_ints(batch, "--batch", 1) or [1],
            parse_ints(depth, "--depth", 0) or [0],
            parse_tests(test or [DEFAULT_TESTS]),
        )
    return points, notes


def _dtypes(values: ListOption) -> list[str]:
    """``--dtype`` items lowercased, checked against the engine's dtype names and deduplicated (order kept)."""
    return list(dict.fromkeys(dtype_name(parse_dtype(item.lower())) for item in split_values(values)))


def _meta(
    source: ModelSource, run: BenchRun, repetitions: int, warmup: int, seed: int, interrupted: bool
) -> dict[str, object]:
    """Everything but the rows: model, devices and bandwidth, protocol, environment, notes."""
    return {
        "model": {
            "name": source.name,
            "description": source.description,
            "family": source.family.name,
            "config": source.config_dict(),
        },
        "devices": list(run.devices.values()),
        "protocol": {"repetitions": repetitions, "warmup": warmup, "seed": seed, "host_memory": host_peak_note()},
        "environment": environment(),
        "baseline": run.baseline_versions,
        "chatglm_cpp": run.chatglm_cpp_version,
        "notes": run.notes,
        "interrupted": interrupted,
    }


def _backend_names(backend: list[str] | None, source: ModelSource) -> list[str]:
    """The backends asked for; for an exported model, the graph-level backend that runs it when none was named, and
    an InputError naming it when an op-level one was (rather than a plan of skipped rows)."""
    names = split_values(backend) or ["auto"]
    needed = exported_backend(Path(source.name))
    if needed is None:
        return names
    if names == ["auto"]:
        return [needed]
    for name in names:
        if not isinstance(REGISTRY.resolve(name)[0], GraphLevelBackend):
            refuse_exported_folder(source.name)
    return names


def bench(
    model: Annotated[
        str | None,
        typer.Option(help="demo model (default), checkpoint folder, HF ChatGLM folder, preset, or random:<preset>"),
    ] = None,
    layers: Annotated[int | None, typer.Option(help="random:<preset> only: number of layers")] = None,
    hidden: Annotated[int | None, typer.Option(help="random:<preset> only: hidden size")] = None,
    heads: Annotated[int | None, typer.Option(help="random:<preset> only: attention heads")] = None,
    kv_heads: Annotated[
        int | None, typer.Option(help="random:<preset> only: key/value groups of a grouped-query model")
    ] = None,
    inner: Annotated[int | None, typer.Option(help="random:<preset> only: MLP inner width")] = None,
    backend: Annotated[ListOption, typer.Option(help="backends (list); ratios compare with the first")] = None,
    dtype: Annotated[
        ListOption, typer.Option(help="fp32, bf16, fp16 (list); default: the backend's first, or one all backends run")
    ] = None,
    quant: Annotated[ListOption, typer.Option(help="none, int8, int4 (list)")] = None,
    quant_scheme: Annotated[ListOption, typer.Option(help="rowwise, groupwise (list)")] = None,
    quant_group_size: Annotated[ListOption, typer.Option(help="32, 64, 128 with groupwise (list)")] = None,
    quant_output: Annotated[ListOption, typer.Option(help="off, on: quantize the output projection too (list)")] = None,
    tp: Annotated[ListOption, typer.Option("--tp", help="tensor-parallel degrees (list)")] = None,
    batch: Annotated[ListOption, typer.Option("--batch", "-b", help="batch sizes (list)")] = None,
    test: Annotated[ListOption, typer.Option("--test", "-t", help="pp<N>, tg<N>, pg<N>,<M> (list)")] = None,
    depth: Annotated[ListOption, typer.Option("--depth", "-d", help="tokens already in the cache (list)")] = None,
    repetitions: Annotated[int, typer.Option("--repetitions", "-r", help="timed repetitions per row")] = 5,
    warmup: Annotated[int, typer.Option(help="untimed repetitions before them")] = 1,
    output: Annotated[ReportFormat, typer.Option("--output", "-o", help="md, csv or json")] = ReportFormat.md,
    out: Annotated[Path | None, typer.Option(help="also write the report to this file")] = None,
    plot: Annotated[Path | None, typer.Option(help="draw tokens/s per engine and configuration into a PNG")] = None,
    baseline: Annotated[bool, typer.Option(help="also time transformers on the same weights")] = True,
    baseline_python: Annotated[
        str | None, typer.Option(help="interpreter with transformers for the baseline (default: this one)")
    ] = None,
    baseline_code: Annotated[
        Path | None, typer.Option(help="folder with modeling_chatglm.py, for an HF folder without its code")
    ] = None,
    bandwidth_gib: Annotated[float, typer.Option(help="least GiB the bandwidth probe reads; 0 skips it")] = 1.0,
    compare_chatglm_cpp: Annotated[
        Path | None,
        typer.Option(help="chatglm.cpp's chatglm_cpp package folder or an interpreter with it: decode side by side"),
    ] = None,
    chatglm_cpp_python: Annotated[
        str | None, typer.Option(help="interpreter that runs --compare-chatglm-cpp's package folder (default: this)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the random input ids")] = 1234,
    tp_job: Annotated[Path | None, typer.Option(hidden=True)] = None,
    tp_rows: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    """Measure prefill (pp), generation (tg) and combined (pg) speed for every combination of the lists given."""
    if tp_job is not None and tp_rows is not None:  # a rank of a TP group this command launched
        _tp_rank(tp_job, tp_rows)
        return
    with user_errors():
        refuse_empty(
            {"--model": model, "--baseline-python": baseline_python, "--chatglm-cpp-python": chatglm_cpp_python}
        )
        shape = Shape(layers, hidden, heads, inner, kv_heads)
        source = resolve_model(model, shape)
        if repetitions < 1 or warmup < 0:
            raise InputError("--repetitions must be at least 1 and --warmup at least 0")
        check_seed(seed, "--seed")
        _check_paths(out, plot, baseline, baseline_python, baseline_code, compare_chatglm_cpp, chatglm_cpp_python)
        if not bandwidth_gib >= 0:  # also refuses nan
            raise InputError(f"--bandwidth-gib takes a size in GiB, or 0 to skip the measurement; got {bandwidth_gib}")
        if plot is not None:
            check_plot_available()
        backends = list(dict.fromkeys(REGISTRY.resolve(b)[0].name for b in _backend_names(backend, source)))
        points, notes = _points(
            backends, source.dtype, dtype, quant, quant_scheme, quant_group_size, quant_output, tp, batch, depth, test
        )
        check_plan(source, points)
        options = BenchOptions(
            repetitions,
            warmup,
            seed,
            baseline,
            baseline_python,
            baseline_code,
            bandwidth_gib,
            compare_chatglm_cpp,
            chatglm_cpp_python,
        )
        run = BenchRun(notes=notes)
        interrupted = False
        if running_under_torchrun():
            comm = init_from_environment(REGISTRY.resolve(backends[0])[0])
            try:
                run_as_torchrun_rank(source, points, options, run, comm)
            finally:
                comm.close()
            if not comm.is_leader:
                return
        else:
            try:
                with progress_bar("benchmarking") as update:
                    run_plan(source, shape, points, options, run, lambda done, total, label: update(done, total))
            except KeyboardInterrupt:
                interrupted = True
        add_ratios(run.rows, backends[0], BASELINE_NAME, external=(CHATGLM_CPP,))
        add_chatglm_cpp_ratios(run.rows)
        meta = _meta(source, run, repetitions, warmup, seed, interrupted)
        _emit(render_report(meta, run.rows, output, backends[0], BASELINE_NAME), out)
        if plot is not None and run.rows:
            write_plot(run.rows, plot, f"glm-engine bench: {source.description}")
        if interrupted:
            print("interrupted: the rows above are the ones finished before Ctrl-C", file=sys.stderr)
            raise typer.Exit(INTERRUPTED_EXIT_CODE)
