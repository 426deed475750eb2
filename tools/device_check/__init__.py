"""The device check: one prepared pass over what a GPU machine must show, each step with its own time limit.

``tools/device_check.sh`` runs ``python -m tools.device_check``, which runs the steps below in order of importance,
each in its own process under its own timeout (a step that hangs or compiles too long is killed and reported, and
the next one starts), then prints one compact table. Each step is a module of this package, runnable alone
(``python -m tools.device_check.sdpa``); with ``--cpu`` every step runs what it can on the CPU at small sizes (how
this package is tested, and a rehearsal before the GPU minutes). docs/benchmarking.md#the-device-check describes the
steps and how to read the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# The whole pass must end within 8 minutes (issue 19); the steps' limits add up to this, leaving the rest for
# starting the interpreter, printing and the launcher of the NCCL step.
TOTAL_BUDGET_S = 450


@dataclass(frozen=True)
class Step:
    """One step: its name, the module that runs it, its time limit, and what it shows (one line)."""

    name: str
    module: str
    timeout_s: int
    shows: str


STEPS = (
    Step("versions", "tools.device_check.versions", 20, "python, torch, CUDA/HIP, Triton, driver; GPUs; backends"),
    Step(
        "sdpa",
        "tools.device_check.sdpa",
        40,
        "each SDPA backend alone vs float64 with the GLM prefix mask, s = 300, 320, 1088, fp16/bf16",
    ),
    Step(
        "dequant",
        "tools.device_check.dequant",
        90,
        "every dequant-GEMM format at ragged K/N, M = 1, 3, 4, 17, 128, fp16/bf16, both kernels vs float64",
    ),
    Step("tests", "tools.device_check.gpu_tests", 100, "the GPU test subset (pytest), failures listed"),
    Step("generation", "tools.device_check.generation", 45, "greedy and beam tokens: CUDA graphs vs eager vs the CPU"),
    Step(
        "conformance", "tools.device_check.conformance_rows", 70, "conformance op and tiny-model rows, worst per check"
    ),
    Step(
        "roofline",
        "tools.device_check.roofline",
        45,
        "decode GB/s of fp16/int8/int4 at a 12288-wide layer, M = 1 and 4, vs the HBM roofline",
    ),
    Step("nccl", "tools.device_check.nccl", 40, "one-rank launch over NCCL: collectives, contexts per GPU"),
)


def step_named(name: str, steps: Sequence[Step] = STEPS) -> Step:
    """The step of ``steps`` called ``name``; a ValueError listing the names otherwise."""
    for step in steps:
        if step.name == name:
            return step
    raise ValueError(f"no step {name!r}; the steps are {', '.join(s.name for s in steps)}")
