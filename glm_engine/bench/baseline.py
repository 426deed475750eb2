"""The transformers baseline: the same weights run eagerly by Hugging Face transformers, timed the same way.

A family's Hugging Face folders run through the reference modeling code the family names
(``Family.transformers_baseline``: for ChatGLM-6B ``modeling_chatglm.py`` reached by the folder's ``auto_map``,
``AutoModel.from_pretrained(folder, trust_remote_code=True)``). A folder without that code (e.g. weights converted
elsewhere) gets it from ``--baseline-code DIR``: a staging folder in /tmp links the weights and the code files and
adds the ``auto_map``; nothing is copied into the checkpoint or into this repository. A family transformers has no
class for (GLM-130B) has its baseline reported as skipped, with the reason, like every other case that cannot run.

The baseline runs in a separate interpreter (``--baseline-python``, default this one): reference code may pin old
transformers releases (ChatGLM-6B's: 4.27-4.33) that need not share an environment with glm-engine. That
interpreter imports ``glm_engine.bench`` from this source tree (through ``PYTHONPATH``) so its inputs and timing
protocol are ours.
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


def _has_code(folder: Path, spec: TransformersBaseline) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "auto_map" in config and (folder / spec.code_files[0]).is_file()


def _probe(python: str, install_hint: str) -> tuple[str, str]:
    """(versions, '') when ``python`` imports transformers and torch, else ('', the reason)."""
    code = "import torch, transformers; print(f'transformers {transformers.__version__}, torch {torch.__version__}')"
    try:
        done = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=worker_env()
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", f"cannot run --baseline-python {python}: {exc}"
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return "", f"transformers cannot be imported by {python} ({last}); {install_hint}, or pass --baseline-python"
    return done.stdout.strip(), ""


def plan_baseline(source: ModelSource, python: str | None, code: Path | None) -> BaselinePlan:
    """Decide whether the baseline can run for ``source``, without loading anything heavy."""
    python = python or sys.executable
    spec = source.family.transformers_baseline
    if spec is None:
        return BaselinePlan(
            None,
            None,
            python,
            f"transformers has no class for the {source.family.title} architecture of {source.description}",
        )
    folder = Path(source.name)
    if source.random or not folder.is_dir():
        return BaselinePlan(
            None,
            None,
            python,
            f"{source.description} exists only in this process: transformers needs a Hugging Face folder (pass one "
            "to --model, e.g. one saved with its config.json and safetensors)",
        )
    if code is None and not _has_code(folder, spec):
        return BaselinePlan(
            folder,
            None,
            python,
            f"{folder} has no modeling code (no auto_map and {spec.code_files[0]} in it); pass --baseline-code DIR "
            f"with the reference's {' and '.join(spec.code_files)}",
        )
    if code is not None:
        missing = [f for f in spec.code_files if not (code / f).is_file()]
        if missing:
            return BaselinePlan(folder, code, python, f"--baseline-code {code} lacks {', '.join(missing)}")
    versions, reason = _probe(python, spec.install_hint)
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
    """This environment with the folder holding ``glm_engine`` first on PYTHONPATH, for another interpreter."""
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
        }
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "results.jsonl"
        job_file.write_text(json.dumps(job), encoding="utf-8")
        out_file.touch()
        command = [plan.python, "-m", "glm_engine.bench.hf_worker", str(job_file), str(out_file)]
        process = subprocess.Popen(command, env=worker_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
            on_result({"error": f"the baseline process exited with code {process.returncode}: {last}"})
