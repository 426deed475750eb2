"""chatglm.cpp side by side (``--compare-chatglm-cpp PATH``): the same Hugging Face folder converted by chatglm.cpp's
own converter, decoded at batch 1 through its Python API, timed by bench's protocol, next to our rows of each width.

chatglm.cpp (li-plus/chatglm.cpp, ggml) is not a dependency: PATH is a folder holding its built ``chatglm_cpp``
package (``__init__.py``, ``convert.py`` and the compiled ``_C`` module: a ``pip install chatglm-cpp`` site-packages
folder, or a source tree with ``_C`` built into it) or a Python interpreter that imports it. It runs in its own
process (``ggml_worker``; ``--chatglm-cpp-python``, default PATH when PATH is an interpreter, else this one), which
imports ``glm_engine.bench`` from this tree for the workload and timing, as the transformers baseline does.

What is compared: each of our CPU rows at TP=1 with chatglm.cpp's type of the same width (floating point against
``f16``, INT8 against ``q8_0``, INT4 against ``q4_0``: ggml's blocks of 32 with an fp16 scale), same test, depth,
seed and ids. ggml quantizes every 2-D weight (embedding and output layer too), so ``--quant-output on`` is ours
like for like. The converter's model and tokenizer loading is replaced by the folder's own tensors and config
(``AutoModel``/``AutoTokenizer`` would need the reference's remote code and a transformers release it runs on); the
file format, the quantizers and the checks are the converter's (``chatglm_cpp.convert.<Release>Converter``). Why
the column is empty, where it is, is said in every skipped row: the option not pointing at chatglm.cpp, a model
chatglm.cpp has no converter for, a folder without its tokenizer file, a batch above 1, a backend not on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glm_engine.model.chatglm2.config import REFERENCE_DEFAULTS as CHATGLM2_DEFAULTS
from glm_engine.model.config_checks import read_json_object

from .baseline import run_worker_job, worker_env
from .measure import Measurement, Sample
from .models import ModelSource, backend_device
from .roofline import cached_bytes_per_token
from .rows import FAILED, OK, Row, row_from_measurement, skipped_row
from .spec import Point, QuantChoice, point_to_json

ENGINE = "chatglm.cpp"
PACKAGE = "chatglm_cpp"
PROBE_TIMEOUT_S = 120
BATCH_ONE = "chatglm.cpp's Python API decodes one sequence at a time (batch 1)"
GGML_KV_ITEMSIZE = 2  # chatglm.cpp caches keys and values in fp16 (GGML_TYPE_F16 k_cache/v_cache)
# Our weight width (bits; 0 = floating point) -> chatglm.cpp's type of that width.
GGML_TYPES = {0: "f16", 8: "q8_0", 4: "q4_0"}
# (family, release) -> chatglm.cpp's converter class and the tokenizer file it stores in the model file.
CONVERTERS: dict[tuple[str, str | None], tuple[str, str]] = {
    ("chatglm", None): ("ChatGLMConverter", "ice_text.model"),
    ("chatglm2", "chatglm2"): ("ChatGLM2Converter", "tokenizer.model"),
    ("chatglm2", "chatglm3"): ("ChatGLM3Converter", "tokenizer.model"),
    ("chatglm2", "glm4"): ("ChatGLM4Converter", "tokenizer.model"),
}


@dataclass(frozen=True)
class GgmlPoint:
    """One chatglm.cpp row: its weight type and the test it runs (engine ``chatglm.cpp``, fp32 activations)."""

    ggml_type: str
    point: Point


@dataclass(frozen=True)
class ChatGLMCppPlan:
    """Whether chatglm.cpp runs and how: the interpreter, the package folder put on its path, the folder and the
    converter; ``skipped`` says why not (a sentence a user can act on)."""

    python: str
    package_dir: Path | None = None
    folder: Path | None = None
    converter: str = ""
    tokenizer_file: Path | None = None
    skipped: str = ""
    version: str = ""
    job: dict[str, Any] = field(default_factory=dict)  # what the worker needs besides the points


def _package_dir(path: Path) -> Path | None:
    """``path`` itself or its parent when it holds the ``chatglm_cpp`` package (``__init__.py`` and ``convert.py``)."""
    for candidate in (path, path.parent):
        if (candidate / PACKAGE / "__init__.py").is_file() and (candidate / PACKAGE / "convert.py").is_file():
            return candidate
    return None


def locate(path: Path, python: str | None) -> tuple[str, Path | None, str]:
    """(interpreter, package folder or None, problem): PATH as a package folder (run by ``python``, default this
    interpreter) or as an interpreter that imports the package itself."""
    if not path.exists():
        return "", None, f"--compare-chatglm-cpp {path} does not exist"
    if path.is_dir():
        package = _package_dir(path)
        if package is not None:
            return python or sys.executable, package, ""
        reason = (
            f"--compare-chatglm-cpp {path} holds no {PACKAGE} package ({PACKAGE}/__init__.py and convert.py); "
            f"pass the folder that contains {PACKAGE}/ with its compiled _C module, or an interpreter where "
            "`pip install chatglm-cpp` put it (its main binary cannot be fed our token ids)"
        )
        return "", None, reason
    if not os.access(path, os.X_OK):
        why = f"is neither a folder holding {PACKAGE}/ nor an executable Python interpreter"
        return "", None, f"--compare-chatglm-cpp {path} {why}"
    return python or str(path), None, ""


def converter_for(source: ModelSource) -> tuple[str, Path | None, str]:
    """(chatglm.cpp's converter class, the tokenizer file it stores, problem) for ``source``."""
    folder = Path(source.name)
    if source.random or not folder.is_dir():
        reason = (
            f"chatglm.cpp converts a Hugging Face folder with its own converter; {source.description} exists "
            "only in this process: save it as a folder (config.json, safetensors, the tokenizer file) and pass that"
        )
        return "", None, reason
    found = CONVERTERS.get((source.family.name, getattr(source.config, "release", None)))
    if found is None:
        reason = (
            "chatglm.cpp converts ChatGLM-6B and THUDM's remote-code ChatGLM2/3 and GLM-4 folders (model_type "
            f"chatglm); {folder} is a {source.family.title} folder: compare the same weights in the remote-code "
            "layout"
        )
        return "", None, reason
    converter, name = found
    if not (folder / name).is_file():
        reason = (
            f"chatglm.cpp stores the tokenizer in its model file and {converter} reads {name}, which {folder} "
            f"lacks: put the release's {name} there"
        )
        return converter, None, reason
    return converter, folder / name, ""


def converter_config(source: ModelSource, folder: Path) -> dict[str, Any]:
    """The config the converter reads: the folder's ``config.json`` over our reading of it in the reference's names
    (which fills absent keys with the reference's defaults, as ``AutoConfig`` would), GLM-4's end ids as one (the
    converter stores the tokenizer's ``<|endoftext|>``, the first of them)."""
    to_hf = getattr(source.config, "to_hf_dict", None)  # ChatGLM-6B's reader writes its config back
    defaults = to_hf() if to_hf else CHATGLM2_DEFAULTS
    data: dict[str, Any] = {"original_rope": True, "pre_seq_len": None, **defaults}
    data.update(read_json_object(folder / "config.json"))
    if isinstance(data.get("eos_token_id"), list):
        data["eos_token_id"] = data["eos_token_id"][0]
    return data


def plan_chatglm_cpp(source: ModelSource, path: Path, python: str | None = None) -> ChatGLMCppPlan:
    """Decide whether chatglm.cpp can run ``source`` (see the module docstring), probing its interpreter."""
    interpreter, package, problem = locate(path, python)
    if problem:
        return ChatGLMCppPlan(interpreter, package, skipped=problem)
    folder = Path(source.name) if not source.random else None
    converter, tokenizer, problem = converter_for(source)
    if problem:
        return ChatGLMCppPlan(interpreter, package, folder, converter, skipped=problem)
    assert folder is not None and tokenizer is not None  # converter_for answered
    version, problem = probe(interpreter, package)
    job = {
        "folder": str(folder),
        "converter": converter,
        "tokenizer_file": str(tokenizer),
        "config": converter_config(source, folder),
        "kv_bytes_per_token": _kv_bytes_per_token(source),
    }
    return ChatGLMCppPlan(interpreter, package, folder, converter, tokenizer, problem, version, job)


def _kv_bytes_per_token(source: ModelSource) -> int:
    config = source.config
    kv_heads = source.family.parts(config).kv_heads or config.num_attention_heads
    return cached_bytes_per_token(config.num_layers, kv_heads, config.head_dim, GGML_KV_ITEMSIZE)


def worker_command(python: str, *args: str) -> list[str]:
    """The command line of the ggml worker in ``python`` (``--probe`` or a job and its output file)."""
    return [python, "-m", "glm_engine.bench.ggml_worker", *args]


def package_env(package: Path | None) -> dict[str, str]:
    """The worker's environment: glm_engine's tree first on PYTHONPATH, then the chatglm_cpp package folder."""
    env = worker_env()
    if package is not None:
        env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(package)])
    return env


def probe(python: str, package: Path | None, option: str = "--compare-chatglm-cpp") -> tuple[str, str]:
    """(chatglm.cpp's version, '') when ``python`` imports the package, its compiled module and its converter; else
    ('', the reason, quoting the import error; ``option`` is the flag that names the interpreter)."""
    where = f"{python}" + (f" with {package} on its path" if package is not None else "")
    try:
        with tempfile.TemporaryDirectory(prefix="glm-engine-bench-ggml-probe-") as cwd:
            done = subprocess.run(
                worker_command(python, "--probe"),
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
                env=package_env(package),
                cwd=cwd,
            )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", f"cannot run {where}: {exc}"
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return "", f"{where} cannot import glm_engine.bench's worker ({last}); install glm-engine's dependencies there"
    if answer.get("problem"):
        return "", (
            f"{where} cannot import chatglm.cpp ({answer['problem']}): build it (`pip install chatglm-cpp`, which "
            f"also needs torch, transformers, tabulate and tqdm for its converter) or point {option} at an "
            "interpreter that has it"
        )
    return str(answer.get("version", "")), ""


def ggml_points(points: Sequence[Point]) -> list[GgmlPoint]:
    """chatglm.cpp's rows for the plan: one per (width, batch, depth, test) of our rows on the CPU at TP=1, in the
    order they first appear."""
    seen: dict[tuple, GgmlPoint] = {}
    for p in points:
        if p.tp != 1 or backend_device(p.backend).type != "cpu":
            continue
        ggml_type = GGML_TYPES[p.quant.bits]
        key = (ggml_type, p.batch, p.depth, p.test)
        seen.setdefault(key, GgmlPoint(ggml_type, Point(ENGINE, "fp32", QuantChoice(), 1, p.batch, p.depth, p.test)))
    return list(seen.values())


def run_chatglm_cpp(
    plan: ChatGLMCppPlan,
    points: Sequence[GgmlPoint],
    repetitions: int,
    warmup: int,
    seed: int,
    workload: dict[str, Any],
    on_result: Callable[[dict], None],
) -> None:
    """Run ``points`` (batch 1) in the worker; ``on_result`` gets each record as it is written, and one
    ``{"error": ...}`` when the process fails (the points not reported yet fail with it)."""
    with tempfile.TemporaryDirectory(prefix="glm-engine-bench-ggml-") as tmp:
        job = {
            **plan.job,
            "workdir": tmp,
            "repetitions": repetitions,
            "warmup": warmup,
            "seed": seed,
            "workload": workload,
            "points": [{"ggml_type": g.ggml_type, "point": point_to_json(g.point)} for g in points],
        }
        command = worker_command(plan.python)
        run_worker_job(command, package_env(plan.package_dir), job, Path(tmp), on_result, "the chatglm.cpp process")


def compare(
    source: ModelSource,
    points: Sequence[Point],
    path: Path,
    python: str | None,
    protocol: tuple[int, int, int],
    device: dict[str, Any],
    add: Callable[[Row], None],
    advance: Callable[[str], None],
) -> str:
    """chatglm.cpp's rows for ``points`` (our plan): planned, run, and handed to ``add`` as they come (skipped ones
    with the reason); returns chatglm.cpp's version ('' when it did not run). ``protocol`` is (repetitions,
    warmup, seed); ``device`` the CPU's entry of the run (name, bandwidth, cache)."""
    wanted = ggml_points(points)
    plan = plan_chatglm_cpp(source, path, python)
    name = device.get("name", "cpu")
    runnable = [g for g in wanted if g.point.batch == 1]
    for g in wanted:
        reason = plan.skipped or ("" if g.point.batch == 1 else BATCH_ONE)
        if reason:
            add(skipped_row(ENGINE, g.point, reason, quant=g.ggml_type, device=name))
            advance(g.point.label)
    if plan.skipped or not runnable:
        return ""
    pending = {_key(g.ggml_type, point_to_json(g.point)): g for g in runnable}

    def on_result(record: dict) -> None:
        done = [pending.pop(_key(record["ggml_type"], record["point"]))] if "point" in record else []
        if not done:  # the process failed: the points not reported yet fail with its message
            done, failed = list(pending.values()), record["error"]
            pending.clear()
        else:
            failed = record.get("error", "")
        for g in done:
            if failed:
                add(skipped_row(ENGINE, g.point, failed, FAILED, quant=g.ggml_type, device=name))
            else:
                add(_row(g, record, device))
            advance(g.point.label)

    workload = {
        "family": source.family.name,
        "config": source.family.config_to_dict(source.config),
        "text_ids": source.text_ids,
    }
    run_chatglm_cpp(plan, runnable, *protocol, workload, on_result)
    return plan.version


def _key(ggml_type: str, point: dict) -> str:
    return json.dumps([ggml_type, point], sort_keys=True)


def _row(g: GgmlPoint, record: dict, device: dict[str, Any]) -> Row:
    samples = [Sample(**s) for s in record["samples"]]
    result = Measurement(samples, record["host_peak_bytes"], None, record["timer"], record.get("process_peak_bytes"))
    return row_from_measurement(
        ENGINE,
        g.point,
        result,
        record["weight_bytes"],
        device.get("read_bandwidth_gbps"),
        device.get("name", "cpu"),
        quant=g.ggml_type,
        cache_bytes=device.get("last_level_cache_bytes"),
        kv_bytes_per_token=record.get("kv_bytes_per_token"),
    )


def width_of(quant: str) -> str:
    """chatglm.cpp's type of the width of one of our rows' ``quant`` names (``none``, ``int8-rowwise``,
    ``int4-g32+out``, ...)."""
    for bits in (8, 4):
        if quant.startswith(f"int{bits}"):
            return GGML_TYPES[bits]
    return GGML_TYPES[0]


def add_chatglm_cpp_ratios(rows: Sequence[Row]) -> None:
    """``vs_chatglm_cpp`` of our rows: tokens/s over chatglm.cpp's at the same width, test, depth and batch, on the
    same device (TP=1)."""
    theirs = {(r.quant, r.test, r.depth, r.batch, r.device): r.tokens_per_s for r in rows if r.engine == ENGINE}
    for row in rows:
        if row.engine == ENGINE or row.status != OK or row.tp != 1:
            continue
        base = theirs.get((width_of(row.quant), row.test, row.depth, row.batch, row.device))
        if base:
            row.vs_chatglm_cpp = row.tokens_per_s / base
