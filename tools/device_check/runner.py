"""Run the device-check steps, each in its own process under its own time limit, and tabulate what they report.

A step's output goes to a file that is echoed as it grows (a person watching sees each row when it is measured, and
no pipe can block on a worker the step left behind); at its limit the step's whole process group is killed and its
rows so far stay in the report. Status from the exit code (``common.py``): ``pass``, ``FAIL`` (the step measured a
failure), ``SKIP`` (nothing to check here, with the reason), ``TIMEOUT`` (killed at its limit), and ``CRASH`` for
anything else: an uncaught exception (exit 1, its last line as the summary), a signal (a segfault in a kernel), an
argparse error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.device_check import Step
from tools.device_check.common import FAILED, PASSED, SKIPPED, SUMMARY_PREFIX, table

REPO = Path(__file__).resolve().parents[2]
POLL_S = 0.2
MAX_SUMMARY_CHARS = 160  # of a step's summary (a crashed step's: its last line, the exception) in the table
STATUS = {PASSED: "pass", FAILED: "FAIL", SKIPPED: "SKIP"}


@dataclass
class StepResult:
    step: Step
    status: str  # pass, FAIL, SKIP, TIMEOUT, CRASH (exit N | signal N)
    seconds: float
    summary: str
    output: str

    @property
    def bad(self) -> bool:
        return self.status not in ("pass", "SKIP")


def command(step: Step, cpu: bool, backend: str, python: str = sys.executable) -> list[str]:
    """The command line that runs ``step`` alone."""
    return [python, "-m", step.module, *(["--cpu"] if cpu else []), "--backend", backend]


def run_step(step: Step, argv: Sequence[str], echo: Callable[[str], None] = print) -> StepResult:
    """Run ``argv`` (``command(step, ...)``) under ``step.timeout_s``; echo its output line by line as it comes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env["PYTHONUNBUFFERED"] = "1"
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
        )
        shown = 0
        timed_out = False
        while process.poll() is None:
            if time.monotonic() - started > step.timeout_s:
                timed_out = True
                _kill_group(process)
                break
            time.sleep(POLL_S)
            shown = _echo_new(out, shown, echo)
        process.wait()
        _echo_new(out, shown, echo)
        out.seek(0)
        text = out.read().decode(errors="replace")
    seconds = time.monotonic() - started
    summaries = [line[len(SUMMARY_PREFIX) :] for line in text.splitlines() if line.startswith(SUMMARY_PREFIX)]
    if timed_out:
        status = "TIMEOUT"
        summary = f"killed at its {step.timeout_s} s limit" + (f" (last: {summaries[-1]})" if summaries else "")
    else:
        status = STATUS.get(process.returncode) or crash_status(process.returncode)
        last_lines = [line for line in text.splitlines() if line.strip()]
        last = last_lines[-1] if last_lines else "no output"
        summary = summaries[-1] if summaries and not status.startswith("CRASH") else last
    return StepResult(step, status, seconds, summary, text)


def crash_status(returncode: int) -> str:
    """The status of a step that ended without reporting: killed by a signal (negative code) or exited otherwise."""
    if returncode < 0:
        return f"CRASH (signal {-returncode})"
    return f"CRASH (exit {returncode})"


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the step and every process it started in its session (pytest workers, a launcher's ranks)."""
    with contextlib.suppress(ProcessLookupError):  # it ended on its own in the meantime
        os.killpg(process.pid, signal.SIGKILL)


def _echo_new(out, shown: int, echo: Callable[[str], None]) -> int:
    """Echo the complete lines written to ``out`` after byte ``shown``; returns the new position."""
    out.seek(shown)
    chunk = out.read()
    end = chunk.rfind(b"\n") + 1
    for line in chunk[:end].decode(errors="replace").splitlines():
        echo(line)
    out.seek(0, os.SEEK_END)
    return shown + end


def summary_table(results: Sequence[StepResult]) -> str:
    """One row per step: status, seconds (of its limit) and its summary line."""
    rows = [
        [i + 1, r.step.name, r.status, f"{r.seconds:.0f}/{r.step.timeout_s}", shorten(r.summary)]
        for i, r in enumerate(results)
    ]
    return table(["#", "step", "status", "s (limit)", "summary"], rows)


def shorten(text: str, limit: int = MAX_SUMMARY_CHARS) -> str:
    """``text`` cut to ``limit`` characters, marked where cut (the step's whole output is in the report)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plan_table(steps: Sequence[Step], cpu: bool, backend: str) -> str:
    """What a run would do: each step, its limit, what it shows and the command that runs it alone."""
    rows = [
        [i + 1, s.name, s.timeout_s, s.shows, "`" + " ".join(command(s, cpu, backend, "python")) + "`"]
        for i, s in enumerate(steps)
    ]
    return table(["#", "step", "limit s", "shows", "run alone"], rows)
