"""Result rows: one per bench point (ours or the baseline's), with the summary numbers and the raw samples.

Rates follow llama-bench: tokens/s of each repetition (batch x tokens the test processes, over the test's time),
then mean +- sample stddev over repetitions. Time to first token is the timed prefill (prompt in, first token's
logits out); inter-token latency is the time of each decode step, median and p90 over every step of every
repetition. Decode rows also carry the GB/s of weights a step streams and its share of the measured read bandwidth,
and, separately, the GB/s of cached keys and values the steps read.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from glm_engine.bench import stats
from glm_engine.bench.measure import Measurement, Sample
from glm_engine.bench.roofline import GB, achieved_gbps, share_or_note
from glm_engine.bench.spec import Point, context_length

OK, SKIPPED, FAILED = "ok", "skipped", "failed"
NOISY_FRACTION = 0.25  # a row whose t/s stddev exceeds this share of its mean is marked noisy


@dataclass
class Row:
    """One line of the report. ``engine`` is the backend name, or ``transformers`` for the baseline."""

    engine: str
    dtype: str
    quant: str
    tp: int
    batch: int
    test: str
    depth: int
    status: str = OK
    reason: str = ""
    device: str = ""
    repetitions: int = 0
    tokens_per_s: float | None = None
    tokens_per_s_std: float | None = None
    noisy: bool = False  # tokens_per_s_std above NOISY_FRACTION of the mean
    seconds: float | None = None
    seconds_std: float | None = None
    ttft_ms: float | None = None
    itl_median_ms: float | None = None
    itl_p90_ms: float | None = None
    peak_host_mb: float | None = None
    peak_rss_mb: float | None = None  # the measuring process's peak resident set so far, loading included (VmHWM)
    peak_device_mb: float | None = None
    weights_gb: float | None = None  # GB a decode step reads (models.streamed_bytes)
    weight_gbps: float | None = None
    bandwidth_gbps: float | None = None
    kv_gb: float | None = None  # GB of cached keys/values a decode step reads, mean over the timed steps
    kv_gbps: float | None = None
    roofline_share: float | None = None
    roofline_note: str = ""  # roofline.IN_CACHE (no share: the weights fit in the last-level cache) or ABOVE_ROOFLINE
    vs_first: float | None = None  # tokens/s over the first backend's at the same configuration
    vs_baseline: float | None = None  # tokens/s over transformers' at the same configuration
    vs_chatglm_cpp: float | None = None  # tokens/s over chatglm.cpp's at the same width (--compare-chatglm-cpp)
    timer: str = ""
    paths: str = ""  # which attention paths and decode stepper ran, and why (runner.ran_paths)
    fallback: str = ""  # why a path fell back to a slower one during the point ("" when none did)
    samples: dict[str, Any] = field(default_factory=dict)  # raw per-repetition data (JSON output only)

    @property
    def config_key(self) -> tuple:
        """What must match for two engines' rows to be compared."""
        return (self.dtype, self.quant, self.tp, self.batch, self.test, self.depth)

    @property
    def baseline_key(self) -> tuple:
        """The baseline runs floating-point weights at TP=1 on each device of the plan: ours compare with it on the
        same device, at the same dtype and test."""
        return (self.device, self.dtype, self.batch, self.test, self.depth)

    def to_dict(self, with_samples: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not with_samples:
            data.pop("samples")
        return data


def _tokens_per_s(sample: Sample, tokens: int) -> float:
    return tokens / sample.total_s


def row_from_measurement(
    engine: str,
    point: Point,
    measurement: Measurement,
    weight_bytes: int | None,
    bandwidth_gbps: float | None,
    device: str,
    quant: str | None = None,
    cache_bytes: int | None = None,
    kv_bytes_per_token: int | None = None,
) -> Row:
    """Summarise a measurement of ``point`` into a row (see the module docstring for the definitions)."""
    samples = measurement.samples
    tokens = point.batch * (point.test.n_prompt + point.test.n_gen)
    rates = [_tokens_per_s(s, tokens) for s in samples]
    totals = [s.total_s for s in samples]
    prefills = [s.prefill_s for s in samples if s.prefill_s is not None]
    steps = [t for s in samples for t in s.step_s]
    row = Row(
        engine,
        point.dtype,
        quant if quant is not None else point.quant.name,
        point.tp,
        point.batch,
        point.test.name,
        point.depth,
        device=device,
        repetitions=len(samples),
        tokens_per_s=stats.mean(rates),
        tokens_per_s_std=stats.stddev(rates),
        noisy=stats.stddev(rates) > NOISY_FRACTION * stats.mean(rates),
        seconds=stats.mean(totals),
        seconds_std=stats.stddev(totals),
        ttft_ms=stats.mean(prefills) * 1e3 if prefills else None,
        itl_median_ms=stats.median(steps) * 1e3 if steps else None,
        itl_p90_ms=stats.percentile(steps, 90) * 1e3 if steps else None,
        peak_host_mb=measurement.host_peak_bytes / 2**20 if measurement.host_peak_bytes is not None else None,
        peak_rss_mb=measurement.process_peak_bytes / 2**20 if measurement.process_peak_bytes is not None else None,
        peak_device_mb=measurement.device_peak_bytes / 2**20 if measurement.device_peak_bytes is not None else None,
        weights_gb=weight_bytes / GB if weight_bytes is not None else None,
        bandwidth_gbps=bandwidth_gbps,
        timer=measurement.timer,
        samples={
            "seconds": totals,
            "tokens_per_s": rates,
            "prefill_s": [s.prefill_s for s in samples],
            "step_s": [s.step_s for s in samples],
        },
    )
    if steps and kv_bytes_per_token is not None:
        kv_bytes = kv_bytes_per_step(point, kv_bytes_per_token)
        row.kv_gb = kv_bytes / GB
        row.kv_gbps = achieved_gbps(kv_bytes, stats.mean(steps))
    if steps and weight_bytes is not None:
        mean_step = stats.mean(steps)
        row.weight_gbps = achieved_gbps(weight_bytes, mean_step)
        if bandwidth_gbps:
            row.roofline_share, row.roofline_note = share_or_note(
                weight_bytes, row.weight_gbps, bandwidth_gbps, cache_bytes
            )
    return row


def kv_bytes_per_step(point: Point, bytes_per_token: int) -> float:
    """Cached keys/values a decode step of ``point`` reads, mean over its steps: the step at position ``c`` attends
    over ``c + 1`` tokens (the cache and its own), for ``c`` from the context to the context + n_gen - 1."""
    mean_tokens = context_length(point) + (point.test.n_gen + 1) / 2
    return point.batch * bytes_per_token * mean_tokens


def skipped_row(
    engine: str, point: Point, reason: str, status: str = SKIPPED, quant: str | None = None, device: str = ""
) -> Row:
    """A row that did not run, with the reason (never silently dropped)."""
    q = quant if quant is not None else point.quant.name
    return Row(engine, point.dtype, q, point.tp, point.batch, point.test.name, point.depth, status, reason, device)


def add_ratios(rows: list[Row], first_engine: str, baseline_engine: str, external: Collection[str] = ()) -> None:
    """Fill ``vs_first`` (each engine's tokens/s over ``first_engine``'s at the same configuration; only when more
    than one of our engines ran) and ``vs_baseline`` (ours over the baseline's on the same device, at the same dtype
    and test). Rows of ``external`` engines (chatglm.cpp) are neither ours nor the baseline: they get no ratio here
    and count as no engine of ours."""
    mine = [r for r in rows if r.engine != baseline_engine and r.engine not in external]
    ours = [r for r in mine if r.status == OK]
    first = {r.config_key: r.tokens_per_s for r in ours if r.engine == first_engine}
    several = len({r.engine for r in mine}) > 1
    base = {r.baseline_key: r.tokens_per_s for r in rows if r.engine == baseline_engine and r.status == OK}
    for row in ours:
        if several and first.get(row.config_key):
            row.vs_first = row.tokens_per_s / first[row.config_key]
        if base.get(row.baseline_key):
            row.vs_baseline = row.tokens_per_s / base[row.baseline_key]
