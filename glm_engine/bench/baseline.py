"""The transformers baseline: the same weights run eagerly by Hugging Face transformers, timed the same way.

A family names how transformers runs its Hugging Face folders (``Family.transformers_baseline``). Remote-code
families (ChatGLM-6B; ChatGLM2/3 and GLM-4 in THUDM's layout) run the reference's ``modeling_chatglm.py`` reached by
the folder's ``auto_map``: ``AutoModel.from_pretrained(folder, trust_remote_code=True)``. A folder without that code
(e.g. weights converted elsewhere) gets it from ``--baseline-code DIR``: a staging folder in /tmp links the weights
and the code files and adds the ``auto_map``; nothing is copied into the checkpoint or into this repository. Native
families (``GlmForCausalLM``, ``Glm4ForCausalLM``: no code files) run transformers' own class,
``AutoModelForCausalLM.from_pretrained(folder)``. A family transformers has no class for (GLM-130B) has its baseline
reported as skipped, with the reason, like every other case that cannot run.

The baseline runs in a separate interpreter (``--baseline-python``, default this one): reference code pins
transformers releases (ChatGLM-6B's: 4.27-4.33; ChatGLM2/3's run on 4.40, GLM-4's remote code from 4.44) that need
not share an environment with glm-engine, and native classes need recent ones (``GlmForCausalLM`` 4.46+,
``Glm4ForCausalLM`` 4.51+). That interpreter imports ``glm_engine.bench`` from this source tree (through
``PYTHONPATH``) so its inputs and timing protocol are ours. Before anything is timed, a probe in that interpreter
reads the folder's config and resolves its model class there (importing the remote code, without building the
model), so a transformers release that cannot run the folder is a skipped row that quotes the error, its version
and what to install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import glm_engine
from glm_engine.model.family import TransformersBaseline

from .models import ModelSource
from .spec import Point, point_to_json

BASELINE_NAME = "transformers"
PROBE_TIMEOUT_S = 120


@dataclass(frozen=True)
class BaselinePlan:
    """Whether the baseline runs, and if not, why (a sentence a user can act on)."""

    folder: Path | None
    code: Path | None
    python: str
    skipped: str = ""
    versions: str = ""
    spec: TransformersBaseline | None = None  # the family's reference code
    workload: dict | None = None  # what the worker needs to build our inputs: family, config, text ids

    @property
    def remote_code(self) -> bool:
        """Whether the folder runs through its own modeling code (``trust_remote_code``) rather than a class of
        transformers (a family whose baseline names no code files)."""
        return self.spec is None or bool(self.spec.code_files)


def _has_code(folder: Path, spec: TransformersBaseline) -> bool:
    """Whether ``folder`` carries its reference code: an ``auto_map`` in its config.json and every code file."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = all((folder / name).is_file() for name in spec.code_files)
    return isinstance(config, dict) and "auto_map" in config and files


def _probe(python: str, folder: Path, remote_code: bool, install_hint: str, cwd: Path) -> tuple[str, str]:
    """(versions, '') when ``python`` can resolve ``folder``'s model class (``hf_worker --probe``, run in ``cwd``),
    else (versions or '', the reason: the interpreter cannot start, glm_engine or transformers cannot be imported
    there, or the folder's config or model class fails under that transformers release, quoted)."""
    kind = "remote" if remote_code else "native"
    command = [python, "-m", "glm_engine.bench.hf_worker", "--probe", str(folder), kind]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=worker_env(), cwd=cwd
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", f"cannot run --baseline-python {python}: {exc}"
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return "", f"transformers cannot be imported by {python} ({last}); {install_hint}, or pass --baseline-python"
    versions, problem = str(answer.get("versions", "")), str(answer.get("problem", ""))
    if problem:
        return versions, (
            f"{versions} in {python} cannot run {folder} ({problem}); {install_hint}, or pass --baseline-python "
            "an interpreter that has it"
        )
    return versions, ""


def _skipped(python: str, reason: str, folder: Path | None = None, code: Path | None = None) -> BaselinePlan:
    return BaselinePlan(folder, code, python, reason)


def plan_baseline(source: ModelSource, python: str | None, code: Path | None) -> BaselinePlan:
    """Decide whether the baseline can run for ``source`` and how (remote code or a transformers class), probing the
    baseline interpreter without loading weights; a plan that cannot run says why in ``skipped``."""
    python = python or sys.executable
    spec = source.family.transformers_baseline
    if spec is None:
        return _skipped(
            python, f"transformers has no class for the {source.family.title} architecture of {source.description}"
        )
    folder = Path(source.name)
    if source.random or not folder.is_dir():
        return _skipped(
            python,
            f"{source.description} exists only in this process: transformers needs a Hugging Face folder (pass one "
            "to --model, e.g. one saved with its config.json and safetensors)",
        )
    if not spec.code_files and code is not None:
        return _skipped(
            python,
            f"--baseline-code {code} supplies remote modeling code, but {folder} is a {source.family.title} folder "
            "that transformers runs with its own class: leave --baseline-code out",
            folder,
            code,
        )
    if spec.code_files and code is None and not _has_code(folder, spec):
        return _skipped(
            python,
            f"{folder} has no modeling code (no auto_map and {' and '.join(spec.code_files)} in it); pass "
            f"--baseline-code DIR with the reference's {' and '.join(spec.code_files)}",
            folder,
        )
    if code is not None:
        missing = [f for f in spec.code_files if not (code / f).is_file()]
        if missing:
            return _skipped(python, f"--baseline-code {code} lacks {', '.join(missing)}", folder, code)
    with tempfile.TemporaryDirectory(prefix="glm-engine-bench-probe-") as tmp:
        staged = folder if code is None else stage_folder(folder, code, Path(tmp) / "model", spec.auto_map)
        versions, reason = _probe(python, staged, bool(spec.code_files), spec.install_hint, Path(tmp))
    workload = {
        "family": source.family.name,
        "config": source.family.config_to_dict(source.config),
        "text_ids": source.text_ids,
    }
    return BaselinePlan(folder, code, python, reason, versions, spec, workload)


def stage_folder(folder: Path, code: Path, into: Path, auto_map: dict[str, str]) -> Path:
    """A folder transformers can load: links to ``folder``'s files and ``code``'s modeling files, and a config.json
    with the ``auto_map`` (from ``code``'s config.json where it has one)."""
    into.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.name != "config.json" and not (into / item.name).exists():
            (into / item.name).symlink_to(item.resolve())
    for item in code.glob("*.py"):
        if not (into / item.name).exists():
            (into / item.name).symlink_to(item.resolve())
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    try:
        config["auto_map"] = json.loads((code / "config.json").read_text(encoding="utf-8"))["auto_map"]
    except (OSError, ValueError, KeyError):
        config["auto_map"] = dict(auto_map)
    (into / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return into


def worker_env() -> dict[str, str]:
    """This environment with the folder holding ``glm_engine`` first on PYTHONPATH, for another interpreter (run in an
    empty working folder, so ``python -m`` cannot pick up a ``glm_engine`` or ``chatglm_cpp`` folder from the
    caller's one)."""
    root = str(Path(glm_engine.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_baseline(
    plan: BaselinePlan,
    points: Sequence[Point],
    device: str,
    repetitions: int,
    warmup: int,
    seed: int,
    threads: int,
    on_result: Callable[[dict], None],
) -> None:
    """Run ``points`` (floating point, TP=1) in the baseline interpreter; ``on_result`` gets each point's record as
    soon as it is written, so an interrupted run keeps the finished ones."""
    with tempfile.TemporaryDirectory(prefix="glm-engine-bench-") as tmp:
        auto_map = dict(plan.spec.auto_map) if plan.spec is not None else {}
        folder = (
            plan.folder if plan.code is None else stage_folder(plan.folder, plan.code, Path(tmp) / "model", auto_map)
        )
        job = {
            "folder": str(folder),
            "device": device,
            "repetitions": repetitions,
            "warmup": warmup,
            "seed": seed,
            "threads": threads,
            "points": [point_to_json(p) for p in points],
            "workload": plan.workload,
            "remote_code": plan.remote_code,
        }
        module = "glm_engine.bench.hf_worker"
        run_worker_job([plan.python, "-m", module], worker_env(), job, Path(tmp), on_result, "the baseline process")


def run_worker_job(
    command: list[str], env: dict[str, str], job: dict, workdir: Path, on_result: Callable[[dict], None], who: str
) -> None:
    """Run a bench worker (``command`` + job file + results file) in ``workdir``; ``on_result`` gets each record it
    wrote, even when it dies, then one ``{"error": ...}`` quoting its last stderr line if it exited non-zero."""
    job_file, out_file = workdir / "job.json", workdir / "results.jsonl"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    out_file.touch()
    process = subprocess.Popen(
        [*command, str(job_file), str(out_file)],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _, stderr = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for line in out_file.read_text(encoding="utf-8").splitlines():
            on_result(json.loads(line))
    if process.returncode:
        last = (stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        on_result({"error": f"{who} exited with code {process.returncode}: {last}"})
