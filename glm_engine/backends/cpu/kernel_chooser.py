"""The process's CPU kernel choices: made at load for a model's real shapes, looked up on every linear call.

``KernelChooser.prepare`` runs at load (``CpuOps.prepare_linears``) on one layer's linears and the output layer (the
layers repeat their shapes) and returns the load notes that name each choice with its GB/s; ``dense`` is the lookup
``CpuOps.linear`` makes per call, which tries a shape first seen later when it is first used (``auto``/``trial``).
Quantized linears have one kernel per format in torch (``quant_linear``): their GB/s is measured and reported beside
the dense choices, with nothing to choose. Modes and candidates: ``kernel_choice``; timing and cache:
``kernel_trial``; docs/cpu-kernels.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from glm_engine.backends.cpu.features import cpu_model_name, kernel_flags
from glm_engine.backends.cpu.kernel_choice import (
    CANDIDATES,
    MANY_TRIAL_OUT,
    MODE_ENV,
    TRIAL_MAX_BYTES,
    TRIAL_ROWS,
    Candidate,
    Choice,
    Key,
    RowClass,
    cache_key,
    candidates_for,
    default_kernel,
    kernel_mode,
    row_class,
)
from glm_engine.backends.cpu.kernel_trial import ChoiceCache, Clock, TrialItem, TrialResult, run_trial
from glm_engine.errors import InputError
from glm_engine.ops.interface import PackedLinear

# (label, weight, bias) of a linear the model runs: what prepare() tries
Linear = tuple[str, "torch.Tensor | PackedLinear", "torch.Tensor | None"]


def _trial_inputs(
    key: Key, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The activation rows and the first rows of the weight (and bias) a trial of ``key`` times: at most
    TRIAL_MAX_BYTES of weight for one or few rows, MANY_TRIAL_OUT rows for many."""
    rows = key[0]
    out = MANY_TRIAL_OUT if rows is RowClass.MANY else TRIAL_MAX_BYTES // (weight.shape[1] * weight.element_size())
    out = max(1, min(out, weight.shape[0]))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(TRIAL_ROWS[rows], weight.shape[1], generator=gen).to(weight.dtype)
    return x, weight[:out], None if bias is None else bias[:out]


def _dense_item(key: Key, weight: torch.Tensor, bias: torch.Tensor | None, names: Sequence[Candidate]) -> TrialItem:
    x, w, b = _trial_inputs(key, weight, bias)
    runs = {c.name: (lambda c=c: c.run(x, w, b)) for c in names}
    return TrialItem(cache_key(key), w.numel() * w.element_size(), runs)


def _packed_item(key: str, weight: PackedLinear) -> TrialItem:
    x = torch.randn(1, weight.in_features, generator=torch.Generator().manual_seed(0))
    return TrialItem(key, weight.nbytes, {packed_kernel_name(weight): lambda: weight(x)})


def packed_kernel_name(packed: PackedLinear) -> str:
    """How a quantized weight runs: its layout class (e.g. ``Int8RowwiseLinear``: torch's int8 kernel)."""
    return type(packed).__name__


class KernelChooser:
    """The choices of one mode (``kernel_mode()``), in memory and, for timed ones, in the cache file."""

    def __init__(self, mode: str | None = None, cache_file: Path | None = None, clock: Clock = time.perf_counter):
        self.mode = kernel_mode() if mode is None else mode
        self.clock = clock
        self.cache = ChoiceCache(cache_file) if self.mode in ("auto", "trial") else None
        self.choices: dict[Key, Choice] = {}
        self.quantized: dict[str, tuple[str, float]] = {}  # label -> (kernel, GB/s)
        self.trial_seconds = 0.0

    def dense(self, rows: int, weight: torch.Tensor, bias: torch.Tensor | None) -> Candidate:
        """The kernel for a product of ``rows`` rows with a floating-point ``weight`` (the per-call lookup)."""
        key = (row_class(rows), weight.dtype, weight.shape[0], weight.shape[1], bias is not None)
        choice = self.choices.get(key)
        if choice is None:
            self._choose([(key, weight, bias)])
            choice = self.choices[key]
        return choice.candidate

    def choice_for(self, rows: int, weight: torch.Tensor, bias: torch.Tensor | None) -> Choice:
        """The choice ``dense`` makes, with where it came from and its GB/s (for reports)."""
        self.dense(rows, weight, bias)
        return self.choices[(row_class(rows), weight.dtype, weight.shape[0], weight.shape[1], bias is not None)]

    def _fixed(self, key: Key) -> Choice:
        rows, dtype, _, _, has_bias = key
        forced = CANDIDATES.get(self.mode)
        if forced is not None and forced.applies(rows, dtype, has_bias):
            return Choice(forced, "forced")
        return Choice(default_kernel(rows, dtype), "off" if forced is None else "default: forced kernel n/a")

    def _choose(self, wanted: Sequence[tuple[Key, torch.Tensor, torch.Tensor | None]]) -> None:
        """Choices for ``wanted``: fixed (off or forced), cached, or by one trial over all that are missing."""
        items: list[TrialItem] = []
        keys: dict[str, Key] = {}
        for key, weight, bias in wanted:
            if key in self.choices or cache_key(key) in keys:
                continue
            names = candidates_for(key[0], key[1], key[4])
            if self.cache is None or len(names) == 1:
                self.choices[key] = self._fixed(key) if self.cache is None else Choice(names[0], "only candidate")
                continue
            cached = self.cache.get(cache_key(key)) if self.mode == "auto" else None
            if cached is not None and cached.get("kernel") in CANDIDATES:
                self.choices[key] = Choice(CANDIDATES[cached["kernel"]], "cached trial", cached.get("gbps"))
                continue
            keys[cache_key(key)] = key
            items.append(_dense_item(key, weight, bias, names))
        if items:
            self._record(self._timed(items), keys)

    def _timed(self, items: list[TrialItem]) -> list[TrialResult]:
        start = time.perf_counter()
        with torch.no_grad():
            results = run_trial(items, clock=self.clock)
        self.trial_seconds += time.perf_counter() - start
        return results

    def _record(self, results: list[TrialResult], keys: dict[str, Key]) -> None:
        for result in results:
            self.choices[keys[result.key]] = Choice(CANDIDATES[result.winner], "trial", result.gbps())
        assert self.cache is not None
        self.cache.update(results)

    def prepare(self, linears: Sequence[Linear]) -> list[str]:
        """Choose kernels for a model's linears (one layer's and the output layer) in every row class a run uses,
        time its quantized kernels, and return the load notes naming each choice."""
        wanted = []
        for _, weight, bias in linears:
            if isinstance(weight, torch.Tensor):
                for rows in RowClass:
                    key = (rows, weight.dtype, weight.shape[0], weight.shape[1], bias is not None)
                    wanted.append((key, weight, bias))
        self._choose(wanted)
        self._time_quantized([(label, w) for label, w, _ in linears if isinstance(w, PackedLinear)])
        return self.notes(linears)

    def _time_quantized(self, packed: Sequence[tuple[str, PackedLinear]]) -> None:
        """GB/s of each quantized weight's kernel for one row: cached, else timed (not in ``off`` or forced modes)."""
        if self.cache is None:
            return
        items, labels = [], {}
        for label, weight in packed:
            kernel, shape = packed_kernel_name(weight), f"{weight.out_features}x{weight.in_features}"
            key = f"quant|{weight.format.value}|{kernel}|{RowClass.ONE.value}|{shape}"  # a new kernel: a new key
            cached = self.cache.get(key) if self.mode == "auto" else None
            if cached is not None:
                self.quantized[label] = (cached["kernel"], cached["gbps"])
            elif key not in labels:
                labels[key] = label
                items.append(_packed_item(key, weight))
        if items:
            results = self._timed(items)
            self.cache.update(results)
            for result in results:
                self.quantized[labels[result.key]] = (result.winner, result.gbps())

    def notes(self, linears: Sequence[Linear]) -> list[str]:
        """One line per row class naming each linear's kernel, plus the quantized kernels' GB/s."""
        timing = f", trial {self.trial_seconds:.2f} s" if self.trial_seconds else ""
        lines = [
            f"cpu linear kernels ({MODE_ENV}={self.mode}{timing}) on {cpu_model_name()} ({kernel_flags()}), "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}"
        ]
        if self.cache is None:  # off or forced: nothing was timed, and every shape takes the same rule
            forced = f"{self.mode} wherever it applies, elsewhere " if self.mode in CANDIDATES else ""
            return [f"{lines[0]}: {forced}{FIXED_RULE}"]
        head = "cpu kernels"
        for rows in RowClass:
            parts = []
            for label, weight, bias in linears:
                if isinstance(weight, torch.Tensor):
                    key = (rows, weight.dtype, weight.shape[0], weight.shape[1], bias is not None)
                    if key in self.choices:
                        parts.append(f"{label} {weight.shape[0]}x{weight.shape[1]} {self.choices[key].describe()}")
            if parts:
                lines.append(f"{head}, {rows.value}: " + "; ".join(parts))
        for label, (kernel, gbps) in self.quantized.items():
            lines.append(f"{head}, quantized {label}: {kernel} {gbps:.3g} GB/s (one row, the format's only kernel)")
        return lines


FIXED_RULE = "F.linear, and fp16 products of more than 8 rows in fp32 rounded to fp16 (the fixed defaults)"
_CHOOSER: KernelChooser | None = None


def chooser() -> KernelChooser:
    """The process's chooser for the current ``GLM_ENGINE_CPU_KERNELS`` (a new one when the variable changed)."""
    global _CHOOSER
    mode = kernel_mode()
    if _CHOOSER is None or _CHOOSER.mode != mode:
        _CHOOSER = KernelChooser(mode)
    return _CHOOSER


def linear_note() -> str:
    """How linears are computed in the current mode, for the backend's support note (no timing)."""
    try:
        mode = kernel_mode()
    except InputError as exc:
        return str(exc)
    if mode in ("auto", "trial"):
        kept = "cached" if mode == "auto" else "fresh"
        return (
            "each shape's kernel (F.linear, addmv, mv then bias, oneDNN on or off, fp32 for many rows) chosen by a "
            f"timed trial on this CPU, {kept} ({MODE_ENV}={mode}; docs/cpu-kernels.md)"
        )
    forced = f"{mode} wherever it applies, elsewhere " if mode in CANDIDATES else ""
    return f"{forced}{FIXED_RULE} ({MODE_ENV}={mode}; docs/cpu-kernels.md)"


def cached_summary() -> str:
    """What ``glm-engine backends`` shows: the mode and the choices cached for this machine, without timing."""
    try:
        mode = kernel_mode()
    except InputError as exc:
        return f"linear kernels: {exc}"
    if mode not in ("auto", "trial"):
        return f"linear kernels: {MODE_ENV}={mode} (no timing)"
    cache = ChoiceCache()
    if not cache.entries:
        return f"linear kernels: {MODE_ENV}={mode}, no trial cached for this CPU yet (one runs when a model loads)"
    one_row = [
        f"{key.split('|')[1]} {key.split('|')[3]} {entry['kernel']} {entry['gbps']:.3g} GB/s"
        for key, entry in sorted(cache.entries.items())
        if key.startswith("dense|") and f"|{RowClass.ONE.value}|" in key
    ]
    shown = "; ".join(one_row) or "none one-row"
    return f"linear kernels: {MODE_ENV}={mode}, {len(cache.entries)} cached choices (1 row: {shown}) in {cache.path}"
