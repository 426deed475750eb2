"""The device check's harness (tools/device_check, docs/benchmarking.md#the-device-check), without a GPU.

Steps written here stand in for the real ones to show that each runs in its own process under its own limit: a step
that hangs (and the child it started) is killed at its limit and reported TIMEOUT, one that raises is reported CRASH
with its exception, and the steps after them still run. The real steps run as they would on this machine: without
a GPU every step but ``versions`` says SKIP and why.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tools.device_check import STEPS, TOTAL_BUDGET_S, Step
from tools.device_check.__main__ import main
from tools.device_check.roofline import hbm_peak_gbps
from tools.device_check.runner import StepResult, summary_table

EIGHT_MINUTES_S = 480  # the limit for the whole pass
ROW = re.compile(r"^\| (\d+) \| ([\w-]+) \| (pass|FAIL|SKIP|TIMEOUT|CRASH \([^)]*\)) \| (\d+)/(\d+) \| (.*) \|$")

HANG = """
import subprocess, sys, time
from tools.device_check.common import LiveTable
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open({pid_file!r}, "w").write(str(child.pid))
LiveTable(["measured"]).add(["before the hang"])
time.sleep(120)
"""
CRASH = """
print("starting")
raise RuntimeError("the kernel exploded")
"""
PASS = """
import sys
from tools.device_check.common import PASSED, summary
summary("fine | with a pipe")
sys.exit(PASSED)
"""
SKIP = """
import sys
from tools.device_check.common import skipped
sys.exit(skipped("no GPU here"))
"""


def summary_rows(output: str) -> list[tuple[str, ...]]:
    """The rows of the summary table (the last table of the output), each checked against the table's format."""
    lines = output[output.rindex("| # | step | status |") :].splitlines()
    assert lines[1] == "|---|---|---|---|---|"
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        match = ROW.match(line)
        assert match, f"not a summary row: {line!r}"
        rows.append(match.groups())
    return rows


@pytest.fixture
def fake_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Step], Path]:
    """Modules ``dc_hang``, ``dc_crash``, ``dc_pass``, ``dc_skip`` importable by the steps' processes."""
    pid_file = tmp_path / "child.pid"
    for name, text in (("hang", HANG.format(pid_file=str(pid_file))), ("crash", CRASH), ("pass", PASS), ("skip", SKIP)):
        (tmp_path / f"dc_{name}.py").write_text(text)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    steps = [
        Step("hang", "dc_hang", 4, "sleeps past its limit"),
        Step("crash", "dc_crash", 20, "raises"),
        Step("pass", "dc_pass", 20, "passes"),
        Step("skip", "dc_skip", 20, "has nothing to check"),
    ]
    return steps, pid_file


def test_a_hanging_step_is_cut_at_its_limit_and_a_crash_is_reported_while_the_rest_still_run(fake_steps, capsys):
    steps, pid_file = fake_steps
    started = time.monotonic()
    code = main(["--cpu"], steps)
    took = time.monotonic() - started
    output = capsys.readouterr().out
    rows = summary_rows(output)
    assert [(r[1], r[2]) for r in rows] == [("hang", "TIMEOUT"), ("crash", "CRASH (exit 1)"), ("pass", "pass"),
                                            ("skip", "SKIP")]  # fmt: skip
    hang, crash, passed, skip = rows
    assert int(hang[3]) <= int(hang[4]) + 2 and "killed at its 4 s limit" in hang[5]
    assert took < 4 + 3 * 20  # the hang cost its limit, not its two minutes
    assert "| before the hang |" in output  # a killed step keeps the rows it printed
    assert "RuntimeError: the kernel exploded" in crash[5]
    assert passed[5] == "fine \\| with a pipe"  # a pipe in a summary does not split the row
    assert skip[5] == "no GPU here"
    assert code == 1  # a timeout or a crash fails the pass
    child = int(pid_file.read_text())
    for _ in range(50):  # the hanging step's own child went with it (its process group was killed)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the hanging step's child {child} outlived it")


def test_passing_and_skipped_steps_make_a_passing_run(fake_steps, capsys):
    steps, _ = fake_steps
    assert main(["--only", "pass", "--only", "skip"], steps) == 0
    assert [r[2] for r in summary_rows(capsys.readouterr().out)] == ["pass", "SKIP"]


def test_the_plan_orders_the_steps_by_importance_within_eight_minutes(capsys):
    assert main(["--dry-run"]) == 0
    output = capsys.readouterr().out
    names = [s.name for s in STEPS]
    assert names == ["versions", "sdpa", "dequant", "tests", "generation", "conformance", "roofline", "nccl"]
    planned = [line.split(" | ")[1] for line in output.splitlines() if re.match(r"^\| \d+ \| ", line)]
    assert planned == names
    assert sum(s.timeout_s for s in STEPS) <= TOTAL_BUDGET_S < EIGHT_MINUTES_S
    assert "python -m tools.device_check.sdpa --backend auto" in output


def test_unknown_step_names_are_refused_with_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        main(["--only", "nope"])
    assert "the steps are versions, sdpa" in capsys.readouterr().err


def test_without_a_gpu_every_step_but_versions_says_skip_and_why(capsys):
    pytest.importorskip("triton")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the steps run for real (bash tools/device_check.sh)")
    code = main(["--skip", "tests"])  # the tests step would run pytest inside pytest; it skips the same way
    rows = summary_rows(capsys.readouterr().out)
    assert code == 0
    assert [(r[1], r[2]) for r in rows][:1] == [("versions", "pass")]
    for row in rows[1:]:
        assert row[2] == "SKIP", row
        assert "cuda" in row[5] or "GPU" in row[5] or "triton" in row[5].lower(), row


def test_the_summary_table_has_one_row_per_step_and_cuts_long_summaries():
    step = Step("x", "m", 10, "")
    table = summary_table([StepResult(step, "pass", 1.2, "y" * 500, ""), StepResult(step, "TIMEOUT", 10.4, "z", "")])
    lines = table.splitlines()
    assert lines[0] == "| # | step | status | s (limit) | summary |" and len(lines) == 4
    assert ROW.match(lines[2]) and lines[2].endswith("y... |") and len(lines[2]) < 200
    assert lines[3] == "| 2 | x | TIMEOUT | 10/10 | z |"


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 3350.0),
        ("NVIDIA H100 SXM5 80GB", 3350.0),
        ("NVIDIA H200", 4800.0),
        ("NVIDIA H200 NVL", 4800.0),
        ("NVIDIA H100 PCIe", None),
        ("NVIDIA A100-SXM4-80GB", None),
    ],
)
def test_the_hbm_peak_is_known_for_h100_sxm_and_h200_only(name, peak):
    assert hbm_peak_gbps(name) == peak


def test_the_sdpa_step_names_what_the_engine_ran_and_fails_the_engine_for_any_error(monkeypatch):
    """A forced backend that raises is "no kernel" (it refuses the arguments); the engine's own path falls back on
    its own, so its row names the kernel or the fallback, and anything it raises fails the row."""
    import torch

    import glm_engine.backends.torch_cuda.attention as attention
    from glm_engine.backends.torch_cuda.attention import AttentionPath, SdpaRun
    from glm_engine.ops.torch_ops import reference_attention
    from tools.device_check import sdpa

    inputs = sdpa.glm_inputs(40, torch.float32, torch.device("cpu"))
    (q, k, v), blocked = inputs
    expected = reference_attention(q.double(), k.double(), v.double(), blocked, 1.0)
    refusal = RuntimeError("No available kernel. Aborting execution.")

    def refuses(*args):
        raise refusal

    assert sdpa.check(inputs, expected, 40, torch.float32, "flash_attention", refuses)[6].startswith("no kernel")
    assert sdpa.check(inputs, expected, 40, torch.float32, "engine run_sdpa", refuses)[6].startswith("FAIL (raised")
    fell_back = SdpaRun(reference_attention(q, k, v, blocked, 1.0), AttentionPath.REFERENCE, "why", fallback="why")
    monkeypatch.setattr(attention, "run_sdpa", lambda *args: fell_back)
    engine = dict(sdpa.backend_calls())["engine run_sdpa"]
    row = sdpa.check(inputs, expected, 40, torch.float32, "engine run_sdpa", engine)
    assert row[6] == "ok (fallback to the reference: why)"
