"""Ctrl-C and SIGTERM end a command cleanly: exit 130/143, no traceback, nothing half-written left behind; a second
signal exits at once (docs/cli.md#interrupting-a-command)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from glm_engine.checkpoint import native
from glm_engine.checkpoint.staging import STAGING_TAG
from glm_engine.cli.interrupts import Interruptions
from glm_engine.model.glm130b.config import CONFORMANCE_CONFIG
from glm_engine.model.glm130b.weights import random_state_dict

COMMAND = [sys.executable, "-m", "glm_engine.cli"]


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize(
    ("signum", "code", "extra"),
    [
        (signal.SIGTERM, 143, []),
        (signal.SIGINT, 130, []),
        (signal.SIGTERM, 143, ["--checkpoint", "glm-tiny", "--tp", "2"]),  # the launcher passes it to the ranks
    ],
)
def test_an_interactive_session_ends_with_the_signals_exit_code(tmp_path, signum, code, extra):
    process = subprocess.Popen(
        [*COMMAND, "run", "--out-seq-length", "4", *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        prompt = process.stdout.read(len("\nPlease Input Query"))  # the model is loaded and waits for a query
        assert "Please Input Query" in prompt
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr and f"{signal.Signals(signum).name}: stopping" in stderr


def test_a_conversion_stopped_by_sigterm_leaves_nothing(tmp_path):
    """A quantization that takes seconds is stopped once its staging folder exists: nothing remains of it."""
    config = CONFORMANCE_CONFIG.with_overrides(
        num_layers=6, hidden_size=1024, num_attention_heads=8, inner_hidden_size=4096
    )
    native.save_native(tmp_path / "src", config, random_state_dict(config, seed=0, dtype=torch.float16))
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            *COMMAND,
            "quantize",
            "--checkpoint",
            str(tmp_path / "src"),
            "--output",
            str(out),
            "--bits",
            "4",
            "--scheme",
            "groupwise",
            "--group-size",
            "32",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        staged = _wait_for(lambda: any(STAGING_TAG in p.name for p in tmp_path.iterdir()), 60)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    if not staged:
        pytest.skip("the conversion finished before it could be stopped")
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_second_signal_exits_at_once(monkeypatch):
    exits = []
    monkeypatch.setattr("os._exit", exits.append)
    interruptions = Interruptions()
    with pytest.raises(KeyboardInterrupt):
        interruptions.handle(signal.SIGINT, None)
    interruptions.handle(signal.SIGTERM, None)
    assert exits == [143]
    assert interruptions.exit_code(130) == 130  # the first signal sets the code
