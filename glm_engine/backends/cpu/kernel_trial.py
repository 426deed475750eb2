"""The timed trial that picks a CPU kernel, and the small JSON cache that keeps its result (docs/cpu-kernels.md).

A trial times every candidate of a set of *items* (one weight shape in one row class each) in interleaved rounds:
each candidate runs once on every item in turn, so consecutive calls read different weights and a weight is not
still in the cache from the previous call (a decode step streams each weight from memory once). After the first
round, candidates more than ``PRUNE_FACTOR`` times slower than an item's best are not timed again on it: the slow
ones are 10-20x slower, and would otherwise eat the budget. (Screening on a small slice instead was tried: on a busy
2-core machine a multi-threaded kernel's call on a few MiB is dominated by waking its threads, ~15 ms, so the screen
kept the wrong kernels.) Each item's winner is its fastest candidate by the minimum over rounds, the least noisy
statistic on a shared machine; the first round also absorbs one-time costs such as oneDNN's primitive creation.

The cache is one JSON file in the user's cache directory, holding the machine it was measured on (CPU model, its
flags, torch version, thread count) and a choice per key; a file from another machine is ignored and rewritten,
and every write goes to a temporary file first and is renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from glm_engine.backends.cpu.features import cpu_flags, cpu_model_name

CACHE_FILE_NAME = "cpu-kernels.json"
CACHE_VERSION = 2  # 2: one record per machine fingerprint
MAX_MACHINES = 16
TRIAL_ROUNDS = 3  # rounds of the interleaved trial; the minimum over them is taken
PRUNE_FACTOR = 4.0  # after round one, candidates this much slower than an item's best are not timed further on it

Clock = Callable[[], float]


@dataclass
class TrialItem:
    """One thing to choose a kernel for: its cache key, the bytes one call reads (for GB/s), and each candidate as a
    ready-to-call closure over its inputs."""

    key: str
    nbytes: int
    candidates: dict[str, Callable[[], Any]]


def _rounded(gbps: float) -> float:
    return float(f"{gbps:.4g}")


@dataclass
class TrialResult:
    """Seconds per call (minimum over rounds) of every candidate timed on one item, and the winner."""

    key: str
    nbytes: int
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def winner(self) -> str:
        return min(self.seconds, key=self.seconds.__getitem__)

    def gbps(self, name: str | None = None) -> float:
        """GB/s of weight read by ``name`` (default the winner)."""
        return self.nbytes / self.seconds[name or self.winner] / 1e9

    def record(self) -> dict[str, Any]:
        """The cache entry: the winner, its GB/s and every candidate's GB/s."""
        return {
            "kernel": self.winner,
            "gbps": _rounded(self.gbps()),
            "candidates": {name: _rounded(self.gbps(name)) for name in self.seconds},
        }


def run_trial(
    items: Sequence[TrialItem], rounds: int = TRIAL_ROUNDS, clock: Clock = time.perf_counter
) -> list[TrialResult]:
    """Time every candidate of every item in interleaved rounds, pruning after the first (see the module
    docstring); ``clock`` is injectable so tests can drive the choice without timing anything."""
    names = list(dict.fromkeys(name for item in items for name in item.candidates))
    alive = [set(item.candidates) for item in items]
    results = [TrialResult(item.key, item.nbytes) for item in items]
    for round_index in range(rounds):
        for name in names:
            for item, live, result in zip(items, alive, results):
                if name in live:
                    start = clock()
                    item.candidates[name]()
                    elapsed = clock() - start
                    result.seconds[name] = min(elapsed, result.seconds.get(name, float("inf")))
        if round_index == 0:
            for live, result in zip(alive, results):
                best = min(result.seconds.values())
                live -= {name for name, t in result.seconds.items() if t > PRUNE_FACTOR * best}
    return results


def cache_path() -> Path:
    """``$XDG_CACHE_HOME/glm-engine/cpu-kernels.json`` (``~/.cache`` where the variable is unset or empty)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "glm-engine" / CACHE_FILE_NAME


def machine_fingerprint() -> dict[str, Any]:
    """What a measured choice depends on beyond the shape: any change makes the cached choices stale."""
    flags = " ".join(sorted(cpu_flags()))
    return {
        "version": CACHE_VERSION,
        "cpu": cpu_model_name(),
        "flags_sha1": hashlib.sha1(flags.encode()).hexdigest()[:16],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def machine_id(machine: dict[str, Any]) -> str:
    """A short stable name for one fingerprint, under which the file keeps that machine's choices."""
    return hashlib.sha1(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:16]


class ChoiceCache:
    """The choices measured on this machine, read from and written through to ``path``.

    The file keeps every fingerprint's choices side by side (``{"machines": {id: {"machine", "choices"}}}``), so runs
    with another thread count, torch or CPU sharing one home directory do not undo each other's trials; at most
    ``MAX_MACHINES`` are kept, the least recently written dropped first."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_path()
        self.machine = machine_fingerprint()
        self.entries: dict[str, dict[str, Any]] = dict(
            self._machines().get(machine_id(self.machine), {}).get("choices", {})
        )

    def _machines(self) -> dict[str, dict[str, Any]]:
        """Every machine's record in the file ({} for a missing, damaged or older-format file)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        machines = data.get("machines") if isinstance(data, dict) else None
        if not isinstance(machines, dict):
            return {}
        return {
            key: record
            for key, record in machines.items()
            if isinstance(record, dict)
            and isinstance(record.get("choices"), dict)
            and key == machine_id(record.get("machine") or {})
        }

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def update(self, results: Sequence[TrialResult]) -> None:
        """Add ``results`` and rewrite the file atomically, keeping the other machines' records as the file holds them
        now (a failed write leaves the choices in memory only)."""
        self.entries.update({r.key: r.record() for r in results})
        machines = self._machines()
        machines.pop(machine_id(self.machine), None)
        machines[machine_id(self.machine)] = {"machine": self.machine, "choices": self.entries}  # newest last
        kept = dict(list(machines.items())[-MAX_MACHINES:])
        payload = json.dumps({"machines": kept}, indent=1)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".cpu-kernels-", suffix=".json")
        except OSError:
            return  # a read-only cache directory: the trial's result still holds for this process
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(payload)
            os.replace(tmp, self.path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
