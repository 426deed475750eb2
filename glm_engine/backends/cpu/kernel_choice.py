"""Which kernel computes each CPU linear: candidates per (dtype, row class), chosen by timing them on this CPU.

The fastest one-row bf16 product differs by 3-8x between CPUs of the same size (docs/cpu-kernels.md has the table):
``torch.addmv`` streams a bf16 weight at 95% of read bandwidth on an AVX-512 Xeon without native bf16 and at 6% on an
AVX2-only EPYC; oneDNN's ``F.linear`` is the fast one there and the slow one on a Zen 4 EPYC, where turning oneDNN off
for the call is fastest. So no rule written for one CPU holds on the next: every (dtype, row class, weight shape,
bias or not) gets the candidate that a short timed trial on the running CPU found fastest (``kernel_trial``), cached
per CPU model, flags, torch version and thread count.

``GLM_ENGINE_CPU_KERNELS`` selects how:

* ``auto`` (default): the cached choice, else a trial (at load on one layer's shapes and the output layer; a shape
  first seen later is tried when first used) whose result is cached;
* ``trial``: as ``auto`` but ignoring the cache (a fresh trial, whose result replaces the cached one);
* ``off``: no timing, the fixed defaults of ``DEFAULTS`` (the test suite runs with this);
* a candidate's name (``linear``, ``addmv/no-onednn`` ...): that candidate wherever it applies, the default elsewhere
  (for benchmarking one kernel against another).

Every candidate computes ``x @ W.T + b`` with fp32 accumulation and one rounding to the output dtype, apart from
where the bias is added (``mv+bias`` rounds the product, then the sum), so all stay inside the conformance bounds
(``tests/test_cpu_kernel_choice.py`` checks each against a float64 product).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F

from glm_engine.errors import InputError

MODE_ENV = "GLM_ENGINE_CPU_KERNELS"
MODES = ("auto", "trial", "off")
FEW_ROWS_MAX = 8  # products of 2..8 rows (batched decode) form their own class; above it, prefill-sized GEMMs


class RowClass(str, Enum):
    """How many rows a product has: the kernels that stream one row fastest are not the ones for many."""

    ONE = "1 row"
    FEW = f"2-{FEW_ROWS_MAX} rows"
    MANY = f">{FEW_ROWS_MAX} rows"


def row_class(rows: int) -> RowClass:
    return RowClass.ONE if rows == 1 else RowClass.FEW if rows <= FEW_ROWS_MAX else RowClass.MANY


Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


class _OneDnnSwitch:
    """Counts the calls inside ``onednn_disabled`` so that overlapping ones (two threads) restore the setting found
    before the first of them, not each other's ``False``."""

    lock = threading.Lock()
    depth = 0
    saved = True


@contextmanager
def onednn_disabled() -> Iterator[None]:
    """oneDNN (mkldnn) off for the calls inside, restored after: torch then dispatches a CPU linear or matrix-vector
    product to its own or BLAS's kernels. Measured to change the dispatch in torch 2.13 (docs/cpu-kernels.md). The
    switch is process-global, so another thread computing meanwhile also sees it off (same results, other speed)."""
    with _OneDnnSwitch.lock:
        if _OneDnnSwitch.depth == 0:
            _OneDnnSwitch.saved = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False
        _OneDnnSwitch.depth += 1
    try:
        yield
    finally:
        with _OneDnnSwitch.lock:
            _OneDnnSwitch.depth -= 1
            if _OneDnnSwitch.depth == 0:
                torch.backends.mkldnn.enabled = _OneDnnSwitch.saved


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def _linear_fp32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The product in fp32, rounded once to the dtype: a GPU's fp16 GEMM numerics, and torch's fast CPU GEMM."""
    out = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    return out.to(x.dtype)


def _addmv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    row = x.reshape(-1)
    out = torch.mv(weight, row) if bias is None else torch.addmv(bias, weight, row)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _mv_then_bias(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = torch.mv(weight, x.reshape(-1))
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _without_onednn(kernel: Kernel) -> Kernel:
    def run(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        with onednn_disabled():
            return kernel(x, weight, bias)

    return run


@dataclass(frozen=True)
class Candidate:
    """A way to compute a floating-point linear, the row classes and dtypes it applies to, and whether it needs a
    bias to differ from another candidate (``mv+bias`` without a bias is ``addmv``'s ``mv``)."""

    name: str
    run: Kernel
    classes: frozenset[RowClass]
    dtypes: frozenset[torch.dtype]
    needs_bias: bool = False

    def applies(self, rows: RowClass, dtype: torch.dtype, has_bias: bool) -> bool:
        return rows in self.classes and dtype in self.dtypes and (has_bias or not self.needs_bias)


_ALL_DTYPES = frozenset({torch.float32, torch.bfloat16, torch.float16})
_ONE = frozenset({RowClass.ONE})
_ANY_ROWS = frozenset(RowClass)


def _pair(name: str, kernel: Kernel, classes: frozenset[RowClass], needs_bias: bool = False) -> list[Candidate]:
    """The candidate as torch dispatches it, and the same call with oneDNN off."""
    return [
        Candidate(name, kernel, classes, _ALL_DTYPES, needs_bias),
        Candidate(f"{name}/no-onednn", _without_onednn(kernel), classes, _ALL_DTYPES, needs_bias),
    ]


CANDIDATES: dict[str, Candidate] = {
    c.name: c
    for c in [
        *_pair("linear", _linear, _ANY_ROWS),
        *_pair("addmv", _addmv, _ONE),
        *_pair("mv+bias", _mv_then_bias, _ONE, needs_bias=True),
        Candidate("linear-fp32", _linear_fp32, frozenset({RowClass.MANY}), frozenset({torch.bfloat16, torch.float16})),
    ]
}

# ``off``'s fixed choice, and the fallback where a forced candidate does not apply. F.linear is never far off the
# best anywhere measured; fp16 GEMMs of many rows run in fp32 because torch's CPU fp16 GEMM is several times slower
# (4096x4096: 2.4 ms native one row, 25 ms converting; the crossover is ~12 rows on AVX2).
DEFAULTS: dict[tuple[RowClass, torch.dtype], str] = {(RowClass.MANY, torch.float16): "linear-fp32"}
DEFAULT_KERNEL = "linear"


def default_kernel(rows: RowClass, dtype: torch.dtype) -> Candidate:
    return CANDIDATES[DEFAULTS.get((rows, dtype), DEFAULT_KERNEL)]


def candidates_for(rows: RowClass, dtype: torch.dtype, has_bias: bool) -> list[Candidate]:
    """Every candidate a trial times for this class, dtype and bias."""
    return [c for c in CANDIDATES.values() if c.applies(rows, dtype, has_bias)]


def kernel_mode() -> str:
    """``GLM_ENGINE_CPU_KERNELS`` checked: a mode of ``MODES`` or a candidate's name (InputError otherwise)."""
    mode = os.environ.get(MODE_ENV, "auto").strip() or "auto"
    if mode not in MODES and mode not in CANDIDATES:
        raise InputError(
            f"{MODE_ENV}={mode!r} is neither a mode ({', '.join(MODES)}) nor a CPU kernel "
            f"({', '.join(CANDIDATES)}); see docs/cpu-kernels.md"
        )
    return mode


# Trial inputs: a one/few-row trial reads at most TRIAL_MAX_BYTES of a weight (its first rows: a row-parallel product
# streams every row alike; interleaved, a layer's five slices, 160 MiB, do not stay in a 32 MiB L3); a many-row trial
# multiplies TRIAL_ROWS rows by MANY_TRIAL_OUT rows of the weight (compute-bound: a slice times the same per byte).
TRIAL_MAX_BYTES = 32 * 2**20
TRIAL_ROWS = {RowClass.ONE: 1, RowClass.FEW: 4, RowClass.MANY: 16}
MANY_TRIAL_OUT = 512


Key = tuple[RowClass, torch.dtype, int, int, bool]


@dataclass(frozen=True)
class Choice:
    """The kernel a linear of one key runs with, where the choice came from, and its measured GB/s (None: not timed)."""

    candidate: Candidate
    source: str  # "trial", "cached trial", "off", "forced"
    gbps: float | None = None

    def describe(self) -> str:
        speed = f" {self.gbps:.3g} GB/s" if self.gbps is not None else ""
        return f"{self.candidate.name} ({self.source}{speed})"


def cache_key(key: Key) -> str:
    rows, dtype, out_features, in_features, has_bias = key
    bias = "+bias" if has_bias else ""
    return f"dense|{str(dtype).removeprefix('torch.')}|{rows.value}|{out_features}x{in_features}{bias}"
