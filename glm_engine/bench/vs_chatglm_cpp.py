"""glm-engine against chatglm.cpp, one process per run (``benchmarks/vs_chatglm_cpp.py``; how to build the peer and
run it: docs/benchmarking.md#the-chatglmcpp-script).

``glm-engine bench --compare-chatglm-cpp`` times both engines with bench's protocol inside two long-lived processes;
this script is the side-by-side table of issue 20: per width (16/8/4 bits) decode tokens/s of chatglm.cpp's
``f16``/``q8_0``/``q4_0`` and of our formats of that width on the same ChatGLM-6B folder, the ratio, the bytes a
decode step reads, the share of the read bandwidth measured in the same run (bench's probe,
:func:`glm_engine.bench.roofline.measure_read_bandwidth`) and the peak resident memory of every run. Each run (one
engine, one format, one round) is its own child process, so its peak RSS is its own and no earlier model stays
loaded; chatglm.cpp's model file is converted once per width, in a child of its own, before the rounds.

Threads: ``--threads`` sets torch's in our runs. chatglm.cpp 0.4.2 has no thread setting (``Pipeline`` and
``generate_next_token`` take none): it runs ``std::thread::hardware_concurrency()`` threads up to 4 and half of them
above (``get_num_physical_cores`` in its ``chatglm.cpp``), and libstdc++ reads that count from glibc's
``get_nprocs()``, the online CPUs, whatever the process's affinity. When that rule does not give ``--threads``, its
runs load a one-function library (compiled here with the C compiler, which building chatglm.cpp needs anyway) that
answers ``get_nprocs()`` with the count that makes the rule give ``--threads``; the run reports the count it saw.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from glm_engine.errors import GlmEngineError

PACKAGE_TOKENIZER = "ice_text.model"  # ChatGLM-6B's SentencePiece file; chatglm.cpp stores it in its model file
# The peer's interpreter, as checked on this project's machines (docs/benchmarking.md#the-chatglmcpp-script).
INSTALL = (
    "python3 -m venv VENV && VENV/bin/pip install setuptools wheel ninja torch==2.13.0 numpy safetensors "
    "sentencepiece tabulate tqdm transformers && VENV/bin/pip download --no-deps --no-binary :all: "
    "--no-build-isolation chatglm-cpp==0.4.2 -d SRC && CMAKE_POLICY_VERSION_MINIMUM=3.5 VENV/bin/pip install "
    "--no-deps --no-build-isolation SRC/chatglm_cpp-0.4.2.tar.gz"
)
GGML_MAX_DECODE_THREADS = 16  # chatglm.cpp decodes with at most 16 threads (set_default_num_threads)
GGML_ALL_THREADS_UP_TO = 4  # up to this many hardware threads it uses all of them, above it half
CHILD_TIMEOUT_S = 3600
GIB = 2**30
# (width, chatglm.cpp's type, [(our label, QuantChoice keywords)]): ggml quantizes its output layer, so "+ lm_head"
# (quant_output) is ours like for like; the plain INT rows keep lm_head in bf16, the reference's choice.
WIDTHS: list[tuple[str, str, list[tuple[str, dict[str, Any]]]]] = [
    ("16-bit", "f16", [("bf16", {})]),
    ("8-bit", "q8_0", [("int8 rowwise", {"bits": 8}), ("int8 rowwise + lm_head", {"bits": 8, "output": True})]),
    (
        "4-bit",
        "q4_0",
        [
            ("int4 g32", {"bits": 4, "group_size": 32}),
            ("int4 g32 + lm_head", {"bits": 4, "group_size": 32, "output": True}),
            ("int4 rowwise + lm_head", {"bits": 4, "output": True}),
        ],
    ),
]
WIDTH_NAMES = [w[0] for w in WIDTHS]


class BenchError(Exception):
    """A problem the user fixes before anything is timed (printed without a traceback)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vs_chatglm_cpp.py", description="Decode tokens/s of glm-engine and chatglm.cpp on one ChatGLM-6B folder"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf-dir", type=Path, help="a ChatGLM-6B Hugging Face folder (config.json, safetensors)")
    source.add_argument(
        "--random-layers", type=int, help="write random ChatGLM-6B-shaped weights with this many full-width layers"
    )
    p.add_argument("--tokenizer", type=Path, help=f"{PACKAGE_TOKENIZER} (default: the folder's; random: the packaged)")
    p.add_argument("--chatglm-cpp-python", default=sys.executable, help="an interpreter that imports chatglm_cpp")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=35, help="prompt tokens (prefilled in one timed forward)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds over the engines of a width")
    p.add_argument("--widths", default=",".join(WIDTH_NAMES))
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--bandwidth-gib", type=float, default=1.0, help="buffer of the read-bandwidth probe (GiB)")
    p.add_argument("--workdir", type=Path, help="for the random folder and model files (default: a temporary one)")
    return p


def check_args(args: argparse.Namespace) -> list[str]:
    """The widths asked for, after refusing what cannot run (a :class:`BenchError` says what to change)."""
    widths = [w.strip() for w in args.widths.split(",") if w.strip()]
    unknown = [w for w in widths if w not in WIDTH_NAMES]
    if unknown or not widths:
        raise BenchError(f"--widths {args.widths!r}: choose from {','.join(WIDTH_NAMES)}")
    for name in ("threads", "prompt", "new_tokens", "repetitions", "rounds"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
    if args.prompt < 2:
        raise BenchError("--prompt must be at least 2 (ChatGLM-6B's prompt ends with [gMASK] <sop>)")
    if args.random_layers is not None and args.random_layers < 1:
        raise BenchError("--random-layers must be at least 1")
    if args.threads > GGML_MAX_DECODE_THREADS:
        raise BenchError(f"--threads {args.threads}: chatglm.cpp decodes with at most {GGML_MAX_DECODE_THREADS}")
    if args.hf_dir is not None and not (args.hf_dir / "config.json").is_file():
        raise BenchError(f"--hf-dir {args.hf_dir} has no config.json: pass a ChatGLM-6B Hugging Face folder")
    return widths


def tokenizer_file(args: argparse.Namespace) -> Path:
    """The ChatGLM-6B tokenizer chatglm.cpp's converter stores: ``--tokenizer``, else the folder's, else (random
    weights) the packaged test tokenizer, which is enough here: neither engine tokenizes, both get the same ids."""
    if args.tokenizer is not None:
        path = args.tokenizer / PACKAGE_TOKENIZER if args.tokenizer.is_dir() else args.tokenizer
    elif args.hf_dir is not None:
        path = args.hf_dir / PACKAGE_TOKENIZER
    else:
        from glm_engine.tokenizer import BUILTIN_TOKENIZER_PATH

        path = BUILTIN_TOKENIZER_PATH
    if not path.is_file():
        raise BenchError(
            f"no ChatGLM-6B tokenizer at {path}: chatglm.cpp stores {PACKAGE_TOKENIZER} in its model file and our "
            f"loader reads it from the folder; pass --tokenizer PATH/{PACKAGE_TOKENIZER} (the release's file)"
        )
    return path


def check_chatglm_cpp(python: str) -> str:
    """chatglm.cpp's version in ``python``, or a :class:`BenchError` quoting the import problem and the install."""
    from .chatglm_cpp import probe

    version, problem = probe(python, None, "--chatglm-cpp-python")
    if problem:
        raise BenchError(f"{problem}\nBuild it into its own venv (minutes): {INSTALL}; then --chatglm-cpp-python VENV")
    return version


def ggml_threads(nprocs: int) -> int:
    """Threads chatglm.cpp 0.4.2 decodes with when ``get_nprocs()`` says ``nprocs``."""
    physical = nprocs if nprocs <= GGML_ALL_THREADS_UP_TO else nprocs // 2
    return min(max(physical, 1), GGML_MAX_DECODE_THREADS)


def nprocs_for(threads: int) -> int:
    """The ``get_nprocs()`` answer that makes chatglm.cpp decode with ``threads`` threads."""
    return threads if threads <= GGML_ALL_THREADS_UP_TO else 2 * threads


def thread_shim(threads: int, workdir: Path) -> dict[str, str]:
    """The environment that makes chatglm.cpp run ``threads`` threads: nothing when the machine's CPU count already
    does, else ``LD_PRELOAD`` of a ``get_nprocs`` compiled here (see the module docstring)."""
    online = os.cpu_count() or 1
    if ggml_threads(online) == threads:
        return {}
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BenchError(
            f"chatglm.cpp would decode with {ggml_threads(online)} threads here, not --threads {threads}, and no C "
            "compiler is on PATH to set it: install one (building chatglm.cpp needs it) or pass "
            f"--threads {ggml_threads(online)}"
        )
    source = workdir / "nprocs.c"
    library = workdir / f"libnprocs{nprocs_for(threads)}.so"
    source.write_text(f"int get_nprocs(void) {{ return {nprocs_for(threads)}; }}\n", encoding="utf-8")
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(source)], check=True)
    return {"LD_PRELOAD": str(library)}


def cpu_description() -> str:
    """The CPU's model name and its SIMD flags (what decides the kernels either engine can use)."""
    model, flags = "unknown CPU", []
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                simd = ("avx", "fma", "f16c", "amx", "sse4_2")
                flags = [f for f in value.split() if f.startswith(simd)]
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, flags: {' '.join(flags) or 'unknown'}"


def write_random_folder(folder: Path, layers: int, tokenizer: Path, seed: int) -> Path:
    """ChatGLM-6B at full width with ``layers`` layers and seeded random fp16 weights, as the releases lay it out
    (``lm_head`` stored equal to the embedding), with ``tokenizer`` as its ``ice_text.model``."""
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from glm_engine.model.chatglm.config import chatglm_preset
    from glm_engine.model.chatglm.weights import random_state_dict

    config = dataclasses.replace(chatglm_preset("chatglm-6b"), num_layers=layers)
    folder.mkdir(parents=True, exist_ok=True)
    hf = {**config.to_hf_dict(), "architectures": ["ChatGLMModel"]}
    (folder / "config.json").write_text(json.dumps(hf), encoding="utf-8")
    weights = random_state_dict(config, seed, torch.float16)
    weights["lm_head.weight"] = weights["transformer.word_embeddings.weight"].clone()
    save_file(weights, str(folder / "model.safetensors"))
    shutil.copyfile(tokenizer, folder / PACKAGE_TOKENIZER)
    return folder


def staged_folder(folder: Path, tokenizer: Path, workdir: Path) -> Path:
    """``folder`` itself when its ``ice_text.model`` is ``tokenizer``, else a folder of links to its files and to
    ``tokenizer`` (nothing is copied)."""
    own = folder / PACKAGE_TOKENIZER
    if own.is_file() and own.resolve() == tokenizer.resolve():
        return folder
    staged = workdir / "staged"
    staged.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.name != PACKAGE_TOKENIZER:
            (staged / item.name).symlink_to(item.resolve())
    (staged / PACKAGE_TOKENIZER).symlink_to(tokenizer.resolve())
    return staged


@dataclass
class Run:
    """One child's answer: tokens/s of the decode steps, the bytes a step reads and the peak resident memory."""

    engine: str
    decode_tps: float = 0.0
    itl_ms: float = 0.0
    ttft_ms: float = 0.0
    weight_bytes: int = 0
    peak_bytes: int = 0  # the child's peak resident set, loading included
    decode_peak_bytes: int = 0  # over the timed repetitions only
    note: str = ""
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def vm_hwm_bytes() -> int:
    """This process's peak resident set so far (bytes)."""
    import torch

    from .device import MemoryTracker

    return int(MemoryTracker(torch.device("cpu")).host_peak() or 0)


def _point_and_work(spec: dict[str, Any]) -> tuple[Any, Any]:
    """bench's point and workload of a run: a prompt of random text ids, then the decode steps fed the same ids."""
    from glm_engine.model.registry import family_named

    from .spec import Kind, Point, QuantChoice, TestSpec
    from .workload import build_workload

    family = family_named(spec["family"])
    config = family.config_from_dict(spec["config"], "the benchmark")
    prompt, total = spec["prompt"], spec["prompt"] + spec["new_tokens"]
    point = Point("cpu", "bf16", QuantChoice(), 1, 1, 0, TestSpec(Kind.COMBINED, prompt, spec["new_tokens"]))
    return point, build_workload(family, config, 1, prompt, total, spec["text_ids"], spec["seed"])


def _summary(engine: str, spec: dict[str, Any], result: Any, weight_bytes: int, load_peak: int) -> dict[str, Any]:
    from .rows import row_from_measurement

    point, _ = _point_and_work(spec)
    row = row_from_measurement(engine, point, result, weight_bytes, None, "cpu")
    decode_peak = int(result.host_peak_bytes or 0)
    peak = max(load_peak, decode_peak)
    return asdict(
        Run(engine, 1e3 / row.itl_median_ms, row.itl_median_ms, row.ttft_ms or 0.0, weight_bytes, peak, decode_peak)
    )


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the folder in one of our formats (bf16 activations on the CPU) and time it."""
    import torch

    from .measure import measure
    from .models import resolve_model
    from .spec import QuantChoice

    torch.set_num_threads(spec["threads"])
    loaded = resolve_model(spec["folder"]).load("cpu", "bf16", QuantChoice(**spec["quant"]))
    load_peak = vm_hwm_bytes()
    point, work = _point_and_work(spec)
    stepper = loaded.runner.decode_stepper(steps=spec["new_tokens"])
    result = measure(loaded.runner, work, point, spec["repetitions"], spec["warmup"], lambda: stepper)
    return _summary(spec["engine"], spec, result, int(loaded.weight_bytes or 0), load_peak)


def convert_ggml(spec: dict[str, Any]) -> dict[str, Any]:
    """Write chatglm.cpp's model file of one type with its own converter (``ggml_worker.convert``)."""
    from .ggml_worker import convert, read_state, streamed_bytes

    state = read_state(Path(spec["folder"]))
    start = time.perf_counter()
    convert(spec["job"], state, spec["ggml_type"], Path(spec["model_file"]))
    return {
        "weight_bytes": streamed_bytes(state, spec["ggml_type"]),
        "convert_s": time.perf_counter() - start,
        "peak_bytes": vm_hwm_bytes(),
    }


def run_ggml(spec: dict[str, Any]) -> dict[str, Any]:
    """Load chatglm.cpp's model file and time it through :class:`~glm_engine.bench.ggml_worker.GgmlRunner`: the
    prompt length is the ``n_ctx`` of every call, as ``Pipeline.generate`` passes it (ChatGLM-6B's positions stop
    at ``n_ctx - 2`` and its block positions count from there)."""
    import chatglm_cpp

    from .ggml_worker import GgmlRunner
    from .measure import measure

    total = spec["prompt"] + spec["new_tokens"]
    pipeline = chatglm_cpp.Pipeline(spec["model_file"], max_length=total + 1)
    load_peak = vm_hwm_bytes()
    point, work = _point_and_work(spec)
    runner = GgmlRunner(pipeline.model, spec["prompt"], total)
    result = measure(runner, work, point, spec["repetitions"], spec["warmup"], lambda: runner)
    out = _summary(spec["engine"], spec, result, spec["weight_bytes"], load_peak)
    nprocs = ctypes.CDLL(None).get_nprocs()  # what libstdc++'s hardware_concurrency() saw in this process
    out["extra"] = {"threads": ggml_threads(nprocs), "get_nprocs": nprocs}
    out["note"] = f"{ggml_threads(nprocs)} threads"
    return out


def write_random(spec: dict[str, Any]) -> dict[str, Any]:
    folder = write_random_folder(Path(spec["folder"]), spec["layers"], Path(spec["tokenizer"]), spec["seed"])
    return {"folder": str(folder)}


CHILDREN = {"ours": run_ours, "convert": convert_ggml, "ggml": run_ggml, "random": write_random}


def child_main(spec_path: str) -> int:
    """A child: run the spec, print its JSON answer as the last line."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    print(json.dumps(CHILDREN[spec["kind"]](spec)), flush=True)
    return 0


@dataclass
class Session:
    """What every run of one invocation shares: the arguments, the folder, the workload and where children run."""

    args: argparse.Namespace
    folder: Path
    workdir: Path
    workload: dict[str, Any]  # family, config and text ids, as bench hands its workers
    job: dict[str, Any]  # chatglm.cpp's converter job (ggml_worker.convert)
    ggml_env: dict[str, str]
    count: int = 0

    def spec(self, kind: str, engine: str, **more: Any) -> dict[str, Any]:
        a = self.args
        common = {"prompt": a.prompt, "new_tokens": a.new_tokens, "repetitions": a.repetitions}
        common.update(warmup=a.warmup, seed=a.seed, threads=a.threads, folder=str(self.folder))
        return {"kind": kind, "engine": engine, **common, **self.workload, **more}

    def child(self, python: str, spec: dict[str, Any], extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        """Run ``spec`` in its own process of ``python``; its JSON answer, or ``{"error": ...}``."""
        self.count += 1
        return run_child(python, spec, self.workdir / f"run-{self.count}.json", extra_env)


def run_child(python: str, spec: dict[str, Any], path: Path, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Write ``spec`` to ``path`` and run it in a process of ``python`` (this checkout first on its path, started in
    ``path``'s folder); its JSON answer, or ``{"error": ...}`` with the last line it wrote to stderr."""
    from .chatglm_cpp import package_env

    path.write_text(json.dumps(spec), encoding="utf-8")
    command = [python, "-m", "glm_engine.bench.vs_chatglm_cpp", "--child", str(path)]
    env = {**package_env(None), **(extra_env or {})}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT_S, cwd=path.parent
        )
    except subprocess.TimeoutExpired:
        return {"error": f"killed after {CHILD_TIMEOUT_S} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except ValueError:
            pass
    last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return {"error": f"exit status {done.returncode}: {last}"}


def run_width(session: Session, width: str, ggml_type: str, ours: list[tuple[str, dict[str, Any]]]) -> list[Run]:
    """Convert chatglm.cpp's file of the width once, then ``--rounds`` alternating rounds of every engine; one
    :class:`Run` per engine: the fastest round's speed, the largest peak, every round's speed in ``extra``."""
    a = session.args
    model_file = session.workdir / f"model-{ggml_type}.bin"
    ggml_name = f"chatglm.cpp {ggml_type}"
    spec = session.spec("convert", ggml_name, job=session.job, ggml_type=ggml_type, model_file=str(model_file))
    converted = session.child(a.chatglm_cpp_python, spec)
    specs = []
    if "error" not in converted:
        more = {"model_file": str(model_file), "weight_bytes": converted["weight_bytes"]}
        specs.append((a.chatglm_cpp_python, session.spec("ggml", ggml_name, **more), session.ggml_env))
    for label, quant in ours:
        specs.append((sys.executable, session.spec("ours", f"glm-engine {label}", quant=quant), None))
    rounds: dict[str, list[dict[str, Any]]] = {spec["engine"]: [] for _, spec, _ in specs}
    for _ in range(a.rounds):
        for python, spec, env in specs:
            answer = session.child(python, spec, env)
            rounds[spec["engine"]].append(answer)
            shown = answer.get("error") or f"{answer['decode_tps']:.2f} tok/s"
            print(f"  {width:6s} {spec['engine']:30s} {shown}", flush=True)
    model_file.unlink(missing_ok=True)
    runs = [] if "error" not in converted else [Run(ggml_name, error=f"conversion: {converted['error']}")]
    for engine, answers in rounds.items():
        runs.append(best_of(engine, answers))
    return runs


def best_of(engine: str, answers: list[dict[str, Any]]) -> Run:
    """One engine's rounds as one run: the fastest decode, the largest peaks; an error when every round failed."""
    good = [Run(**a) for a in answers if not a.get("error")]
    if not good:
        return Run(engine, error="; ".join(sorted({a["error"] for a in answers})) or "no round ran")
    best = max(good, key=lambda r: r.decode_tps)
    best.peak_bytes = max(r.peak_bytes for r in good)
    best.decode_peak_bytes = max(r.decode_peak_bytes for r in good)
    best.extra = {**best.extra, "rounds": [round(r.decode_tps, 2) for r in good]}
    return best


def print_table(results: list[tuple[str, list[Run]]], bandwidth_gbps: float | None, args: argparse.Namespace) -> None:
    """The markdown table: one row per engine of each width (see the module docstring for the columns)."""
    measured = f"{bandwidth_gbps:.1f} GB/s" if bandwidth_gbps else "not measured (--bandwidth-gib 0)"
    print(
        f"\nbatch 1, {args.prompt}-token prompt, {args.new_tokens} decode steps, {args.threads} threads, median step "
        f"of {args.repetitions} repetitions, best of {args.rounds} round(s); read bandwidth {measured}"
    )
    print(
        "| width | engine | decode tok/s | vs chatglm.cpp | MB read / token | GB/s | of read bandwidth "
        "| peak RSS GiB (run) | peak RSS GiB (decode) | rounds / note |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for width, runs in results:
        base = next((r.decode_tps for r in runs if r.engine.startswith("chatglm.cpp") and not r.error), None)
        for r in runs:
            if r.error:
                print(f"| {width} | {r.engine} | failed: {r.error} |||||||")
                continue
            gbps = r.weight_bytes * r.decode_tps / 1e9
            ratio = f"{r.decode_tps / base:.2f}x" if base else "-"
            share = f"{gbps / bandwidth_gbps:.0%}" if bandwidth_gbps else "-"
            peaks = f"{r.peak_bytes / GIB:.2f} | {r.decode_peak_bytes / GIB:.2f}"
            note = ", ".join(filter(None, [" / ".join(map(str, r.extra.get("rounds", []))), r.note]))
            print(
                f"| {width} | {r.engine} | {r.decode_tps:.2f} | {ratio} | {r.weight_bytes / 1e6:.1f} | {gbps:.1f} | "
                f"{share} | {peaks} | {note} |"
            )


def prepare(args: argparse.Namespace, workdir: Path) -> tuple[Session, str]:
    """Check the tokenizer and chatglm.cpp, write or stage the folder, and read its config (nothing is timed);
    the session and chatglm.cpp's version."""
    from .chatglm_cpp import CONVERTERS, converter_config, converter_for
    from .models import resolve_model

    tokenizer = tokenizer_file(args)
    version = check_chatglm_cpp(args.chatglm_cpp_python)
    ggml_env = thread_shim(args.threads, workdir)
    if args.hf_dir is not None:
        folder = staged_folder(args.hf_dir, tokenizer, workdir)
    else:
        # in a child, so that the parent does not keep the weights' memory while the runs are measured
        print(f"writing {args.random_layers} random ChatGLM-6B layers into {workdir} ...", flush=True)
        folder = workdir / "random-chatglm-6b"
        spec = {"kind": "random", "folder": str(folder), "layers": args.random_layers}
        spec.update(tokenizer=str(tokenizer), seed=args.seed)
        written = run_child(sys.executable, spec, workdir / "random.json")
        if written.get("error"):
            raise BenchError(f"writing the random weights failed: {written['error']}")
    source = resolve_model(str(folder))
    converter, _, problem = converter_for(source)
    if converter and converter != CONVERTERS[("chatglm", None)][0]:  # the converter names the release
        raise BenchError(
            f"{args.hf_dir} is a {source.family.title} folder; this script compares ChatGLM-6B: use "
            "`glm-engine bench --compare-chatglm-cpp` for ChatGLM2/3 and GLM-4"
        )
    if problem:
        raise BenchError(problem)
    job = {
        "folder": str(folder),
        "converter": converter,
        "tokenizer_file": str(folder / PACKAGE_TOKENIZER),
        "config": converter_config(source, folder),
    }
    workload = {
        "family": source.family.name,
        "config": source.family.config_to_dict(source.config),
        "text_ids": source.text_ids,
    }
    return Session(args, folder, workdir, workload, job, ggml_env), version


def compare(args: argparse.Namespace, widths: list[str], workdir: Path) -> int:
    """Measure the read bandwidth, then every width; print the table. 1 when a run failed."""
    import torch

    from .roofline import measure_read_bandwidth

    session, version = prepare(args, workdir)
    torch.set_num_threads(args.threads)
    shim = session.ggml_env.get("LD_PRELOAD")
    how = f"through LD_PRELOAD={shim}" if shim else "by its own rule from the CPU count"
    print(f"CPU: {cpu_description()}")
    print(f"torch {torch.__version__}; {version}; chatglm.cpp decodes with {args.threads} threads ({how})")
    bandwidth = None
    if args.bandwidth_gib > 0:
        measured = measure_read_bandwidth(torch.device("cpu"), args.bandwidth_gib, ("bf16",))
        kernels = ", ".join(f"{k} {v:.1f}" for k, v in measured.kernels.items())
        print(f"read bandwidth: {measured.gbps:.1f} GB/s ({measured.kernel}; {kernels} GB/s)", flush=True)
        bandwidth = measured.gbps
    results = [(w, run_width(session, w, t, ours)) for w, t, ours in WIDTHS if w in widths]
    print_table(results, bandwidth, args)
    return 1 if any(r.error for _, runs in results for r in runs) else 0


def main(argv: list[str] | None = None) -> int:
    """The script's entry (``--child SPEC`` is a run started by the script itself)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1])
    args = parser().parse_args(argv)
    try:
        widths = check_args(args)
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="vs-chatglm-cpp-", dir=args.workdir) as tmp:
            return compare(args, widths, Path(tmp))
    except (BenchError, GlmEngineError) as exc:  # a folder our loader refuses says why, as the CLI does
        print(f"vs_chatglm_cpp.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
