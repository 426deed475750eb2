"""Where and with what a bench ran: machine, Python/torch/glm-engine versions and the git commit, for the JSON
report (numbers without their environment cannot be compared later)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import glm_engine


def git_commit() -> str | None:
    """The commit of the glm-engine source tree in use (with ``-dirty`` for local changes), None outside a checkout."""
    root = Path(glm_engine.__file__).resolve().parent.parent
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def environment() -> dict[str, Any]:
    return {
        "glm_engine": glm_engine.__version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_hip": torch.version.hip,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
