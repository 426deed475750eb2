"""Bench results as Markdown (people), CSV (sheets) or JSON (tools, with raw samples and the environment).

The Markdown report is a header (model, device, measured bandwidth, protocol), the table of every row (skipped ones
with their reason), and, when several engines ran (backends, or the transformers baseline), a side-by-side table of
tokens/s per engine with each engine's ratio to the first backend and to the baseline; with chatglm.cpp's rows
(``--compare-chatglm-cpp``), a table of each chatglm.cpp type next to our rows of the same width.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from glm_engine.bench.chatglm_cpp import ENGINE as CHATGLM_CPP
from glm_engine.bench.chatglm_cpp import width_of
from glm_engine.bench.roofline import IN_CACHE
from glm_engine.bench.rows import NOISY_FRACTION, OK, SKIPPED, Row
from glm_engine.conformance.report import ReportFormat

__all__ = ["ReportFormat", "render_report"]

CSV_COLUMNS = [name for name in Row.__dataclass_fields__ if name != "samples"]


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _rate(row: Row) -> str:
    if row.status != OK:
        return row.status
    return f"{row.tokens_per_s:.2f} ± {row.tokens_per_s_std:.2f}" + (" (noisy)" if row.noisy else "")


def _share(row: Row) -> str:
    """The roofline share, "n/a (in cache)" when the weights fit in the last-level cache, flagged above 100%."""
    if row.roofline_note == IN_CACHE:
        return IN_CACHE
    if row.roofline_share is None:
        return ""
    return f"{row.roofline_share:.0%}" + (" (!)" if row.roofline_share > 1 else "")


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(columns: Sequence[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out.extend("| " + " | ".join(_escape(cell) for cell in line) + " |" for line in lines)
    return out


def _main_table(rows: Sequence[Row], first: str, baseline: str) -> list[str]:
    against_cpp = any(r.engine == CHATGLM_CPP for r in rows)
    columns = [
        "engine",
        "dtype",
        "quant",
        "tp",
        "batch",
        "test",
        "t/s",
        "peak RSS MB",
        "TTFT ms",
        "ITL p50 ms",
        "ITL p90 ms",
        "weights GB/s",
        "of roofline",
        "KV GB/s",
        "host MB",
        "device MB",
        f"vs {first}",
        f"vs {baseline}",
        *([f"vs {CHATGLM_CPP}"] if against_cpp else []),
        "note",
    ]
    lines = [
        [
            r.engine,
            r.dtype,
            r.quant,
            str(r.tp),
            str(r.batch),
            f"{r.test} @ d{r.depth}",
            _rate(r),
            _num(r.peak_rss_mb, 0),
            _num(r.ttft_ms),
            _num(r.itl_median_ms),
            _num(r.itl_p90_ms),
            _num(r.weight_gbps, 1),
            _share(r),
            _num(r.kv_gbps),
            _num(r.peak_host_mb, 0),
            _num(r.peak_device_mb, 0),
            _ratio(r.vs_first),
            _ratio(r.vs_baseline),
            *([_ratio(r.vs_chatglm_cpp)] if against_cpp else []),
            r.reason or (f"fallback: {r.fallback}" if r.fallback else ""),
        ]
        for r in rows
    ]
    return _table(columns, lines)


def _against_chatglm_cpp(rows: Sequence[Row], baseline: str) -> list[str]:
    """Each chatglm.cpp row next to our rows of the same width (f16: floating point, q8_0: INT8, q4_0: INT4) at the
    same test, depth, batch and device, at TP=1, with our tokens/s over chatglm.cpp's."""
    columns = ["chatglm.cpp", "batch", "test", "chatglm.cpp t/s", "glm-engine at that width: t/s (vs chatglm.cpp)"]
    ours = [r for r in rows if r.engine not in (CHATGLM_CPP, baseline) and r.status == OK and r.tp == 1]
    lines = []
    for cpp in (r for r in rows if r.engine == CHATGLM_CPP):
        same = [
            o
            for o in ours
            if (width_of(o.quant), o.test, o.depth, o.batch, o.device)
            == (cpp.quant, cpp.test, cpp.depth, cpp.batch, cpp.device)
        ]
        cells = [
            f"{o.engine} {o.dtype} {o.quant}: {o.tokens_per_s:.2f}"
            + (f" ({_ratio(o.vs_chatglm_cpp)})" if o.vs_chatglm_cpp is not None else "")
            for o in same
        ]
        rate = _rate(cpp) if cpp.status == OK else f"{cpp.status}: {cpp.reason}"
        lines.append([cpp.quant, str(cpp.batch), f"{cpp.test} @ d{cpp.depth}", rate, "; ".join(cells)])
    return _table(columns, lines)


def _side_by_side(rows: Sequence[Row], first: str, baseline: str) -> list[str]:
    """tokens/s per engine for each configuration, with ratios to the first backend and to the baseline (one
    baseline column per device it ran on; each engine's ratio is to the baseline on its own device)."""
    engines = list(dict.fromkeys(r.engine for r in rows))
    ours = [e for e in engines if e != baseline]
    base_devices = list(dict.fromkeys(r.device for r in rows if r.engine == baseline))
    keys = list(dict.fromkeys(r.config_key for r in rows if r.engine != baseline))
    by = {(r.engine, r.config_key): r for r in rows}
    base_by = {r.baseline_key: r for r in rows if r.engine == baseline}
    columns = ["dtype", "quant", "tp", "batch", "test"] + [f"{e} t/s" for e in ours]
    columns += [f"{e} / {first}" for e in ours if e != first]
    if len(base_devices) == 1:
        columns += [f"{baseline} t/s"]
    else:
        columns += [f"{baseline} t/s ({device or 'no device'})" for device in base_devices]
    if base_devices:
        columns += [f"{e} / {baseline}" for e in ours]
    lines = []
    for key in keys:
        dtype, quant, tp, batch, test, depth = key
        line = [dtype, quant, str(tp), str(batch), f"{test} @ d{depth}"]
        line += [_rate(by[(e, key)]) if (e, key) in by else "" for e in ours]
        line += [_ratio(by[(e, key)].vs_first) if (e, key) in by else "" for e in ours if e != first]
        for device in base_devices:
            base = base_by.get((device, dtype, batch, test, depth))
            line.append(_rate(base) if base is not None else "")
        if base_devices:
            line += [_ratio(by[(e, key)].vs_baseline) if (e, key) in by else "" for e in ours]
        lines.append(line)
    return _table(columns, lines)


def _detail(device: dict[str, Any]) -> str:
    return f"; {device['detail']}" if device.get("detail") else ""


def _bandwidth(device: dict[str, Any]) -> str:
    """The measured bandwidth, the kernel that gave it, the others, and the probe's size against the cache."""
    bw = device.get("read_bandwidth_gbps")
    if not bw:
        return ""
    text = f"; measured read bandwidth {bw:.1f} GB/s"
    kernels = device.get("read_bandwidth_kernels") or {}
    if device.get("read_bandwidth_kernel"):
        others = ", ".join(f"{k} {v:.1f}" for k, v in kernels.items() if k != device["read_bandwidth_kernel"])
        text += f" ({device['read_bandwidth_kernel']}" + (f"; {others}" if others else "") + ")"
    if device.get("probe_buffer_bytes"):
        text += f" over {device['probe_buffer_bytes'] / 2**20:.0f} MiB"
    cache = device.get("last_level_cache_bytes")
    text += f", last-level cache {cache / 2**20:.0f} MiB" if cache else ", last-level cache size unknown"
    return text


def _header(meta: dict[str, Any], rows: Sequence[Row] = ()) -> list[str]:
    lines = [f"# glm-engine bench: {meta['model']['description']}", ""]
    for device in meta.get("devices", []):
        lines.append(f"- {device['backend']}: {device['name']}" + _bandwidth(device) + _detail(device))
    if any(d.get("read_bandwidth_gbps") for d in meta.get("devices", [])):
        lines.append(
            "- of roofline: weights GB/s over the measured read bandwidth (the best of the kernels listed); "
            "n/a (in cache) when the weights fit in the last-level cache; (!) marks a share above 100%, where "
            "part of the weights came from a cache or the probe read slower than decode does"
        )
    protocol = meta["protocol"]
    lines.append(
        f"- {protocol['repetitions']} repetitions after {protocol['warmup']} warm-up; t/s is mean ± stddev over "
        f"repetitions; TTFT is the timed prefill, ITL each decode step"
    )
    lines.append(
        "- weights GB/s: the weight bytes a decode step reads (each weight once in the form it runs in; an embedding "
        "table that is not also the output projection is left out, a step reads one row of it per token) over the "
        "mean step; KV GB/s: the cached keys and values the steps read (mean over the timed steps) over the same time"
    )
    if meta.get("baseline"):
        lines.append(
            f"- baseline: {meta['baseline']} (the model's reference code eagerly, or transformers' own class), "
            "same inputs and protocol"
        )
    if meta.get("chatglm_cpp"):
        lines.append(
            f"- {meta['chatglm_cpp']}: the same folder converted by its own converter (every 2-D weight in f16, q8_0 "
            "or q4_0, embedding and output layer included; fp32 activations), batch 1 through its Python API with "
            "its own thread count, same ids and protocol; vs chatglm.cpp compares our rows of the same width "
            "(floating point vs f16, INT8 vs q8_0, INT4 vs q4_0; --quant-output on is like for like)"
        )
    if any(r.noisy for r in rows):
        lines.append(
            f"- (noisy): the row's t/s stddev is above {NOISY_FRACTION:.0%} of its mean (other load on the machine, "
            "or too few repetitions); rerun it before drawing conclusions"
        )
    if meta.get("interrupted"):
        lines.append("- **interrupted**: only the rows finished before Ctrl-C are shown")
    for note in meta.get("notes", []):
        lines.append(f"- {note}")
    return lines


def _collapse_skipped_engines(rows: Sequence[Row]) -> tuple[list[Row], list[str]]:
    """Rows without the engines whose every row was skipped for one reason, and one line per such engine (so a
    baseline that cannot run this model is said once, not on every configuration's row)."""
    reasons: dict[str, set[str]] = {}
    for row in rows:
        reasons.setdefault(row.engine, set()).add(row.reason if row.status == SKIPPED else "\0ran")
    gone = {engine: next(iter(r)) for engine, r in reasons.items() if len(r) == 1 and "\0ran" not in r}
    if len(gone) == len(reasons):  # nothing ran at all: keep the rows, each with its reason
        return list(rows), []
    notes = [f"{engine}: skipped every configuration: {reason}" for engine, reason in gone.items()]
    return [r for r in rows if r.engine not in gone], notes


def render_report(meta: dict[str, Any], rows: Sequence[Row], fmt: ReportFormat, first: str, baseline: str) -> str:
    """The whole report in ``fmt``; ``first`` is the backend ratios compare against, ``baseline`` its engine name."""
    if fmt is ReportFormat.json:
        return json.dumps({**meta, "rows": [r.to_dict() for r in rows]}, indent=2, default=str)
    if fmt is ReportFormat.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row.to_dict(with_samples=False))
        return buffer.getvalue()
    rows, skipped = _collapse_skipped_engines(rows)
    lines = _header(meta, rows) + [f"- {note}" for note in skipped] + [""] + _main_table(rows, first, baseline)
    engines = [r for r in rows if r.engine != CHATGLM_CPP]
    if len({r.engine for r in engines}) > 1:
        lines += ["", "## Side by side", ""] + _side_by_side(engines, first, baseline)
    if any(r.engine == CHATGLM_CPP for r in rows):
        lines += ["", "## Against chatglm.cpp", ""] + _against_chatglm_cpp(rows, baseline)
    return "\n".join(lines)
