"""Timing one bench point: warm-up runs, then timed repetitions, each from an emptied cache filled to the test's depth.

One repetition: the KV cache emptied (one cache serves every repetition of a point, so a CUDA graph captured in the
warm-up replays in the timed runs, as in one long generation); the untimed prefix (``depth`` tokens, or the
one-token prompt of a generation test); the timed prefill of ``n_prompt`` tokens in one forward (its time is the
time to first token); then ``n_gen`` timed single-token decode steps (inter-token latencies) fed from the workload,
with the stepper generation itself uses (CUDA graphs where the engine would replay them). Sampling and
tokenization are outside the timing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from glm_engine.bench.device import MemoryTracker, Timer, process_peak_bytes
from glm_engine.bench.spec import Point, context_length
from glm_engine.bench.workload import Workload


class Stepper(Protocol):
    def step(
        self, cache: object, input_ids: torch.Tensor, position_ids: torch.Tensor, blocked: torch.Tensor
    ) -> torch.Tensor: ...


class Runner(Protocol):
    device: torch.device

    def new_cache(self, batch_size: int, max_length: int) -> object:
        """A cache with ``length`` (tokens held) and ``reset()``, which empties it."""

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        blocked: torch.Tensor,
        cache: object = None,
        last_only: bool = False,
    ) -> torch.Tensor: ...


@dataclass
class Sample:
    """One repetition: the prefill's seconds (None without a prompt) and each decode step's seconds."""

    prefill_s: float | None
    step_s: list[float] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return (self.prefill_s or 0.0) + sum(self.step_s)


@dataclass
class Measurement:
    samples: list[Sample]
    host_peak_bytes: int | None
    device_peak_bytes: int | None
    timer: str
    process_peak_bytes: int | None = None  # the process's peak resident set so far, loading included


def run_once(runner: Runner, cache: object, work: Workload, point: Point, timer: Timer, stepper: Stepper) -> Sample:
    """One repetition of ``point`` (see the module docstring) in the emptied ``cache``."""
    context = context_length(point)
    total = point.tokens_needed()
    cache.reset()  # type: ignore[attr-defined]
    prefix = point.depth if point.test.n_prompt else context
    if prefix:
        runner.forward(*work.part(0, prefix), cache, last_only=True)
    prefill = None
    if point.test.n_prompt:
        inputs = work.part(prefix, context)  # sliced before the timer starts: only the model is timed
        timer.start()
        runner.forward(*inputs, cache, last_only=True)
        prefill = timer.stop()
    steps = []
    for col in range(context, total):
        inputs = work.part(col, col + 1)
        timer.start()
        stepper.step(cache, *inputs)
        steps.append(timer.stop())
    return Sample(prefill, steps)


def measure(
    runner: Runner,
    work: Workload,
    point: Point,
    repetitions: int,
    warmup: int,
    make_stepper: Callable[[], Stepper],
) -> Measurement:
    """``warmup`` discarded repetitions, then ``repetitions`` timed ones, with peak memory over the timed ones."""
    timer = Timer(runner.device)
    memory = MemoryTracker(runner.device)
    work = work.to(runner.device)
    stepper = make_stepper()
    with torch.inference_mode():
        cache = runner.new_cache(point.batch, point.tokens_needed())
        for _ in range(warmup):
            run_once(runner, cache, work, point, timer, stepper)
        memory.reset()
        samples = [run_once(runner, cache, work, point, timer, stepper) for _ in range(repetitions)]
    return Measurement(samples, memory.host_peak(), memory.device_peak(), timer.kind, process_peak_bytes())
