"""``--plot FILE.png``: tokens/s per engine and configuration as grouped bars (matplotlib, an optional extra).

One group of bars per configuration (test, depth, dtype, quantization, batch, TP), one bar per engine (and device,
for an engine that ran on several: the baseline), with the stddev over repetitions as error bars; skipped rows
leave a gap. matplotlib is imported here only, so a missing install fails with a MissingDependencyError that names
the extra, not at ``import glm_engine``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from glm_engine.bench.rows import OK, Row
from glm_engine.errors import MissingDependencyError

PLOT_INSTALL = "pip install 'glm-engine[plot]' (or pip install matplotlib)"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError(f"--plot needs matplotlib, which is not installed: {PLOT_INSTALL}") from None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def check_plot_available() -> None:
    """Fail before measuring when --plot cannot be drawn."""
    _pyplot()


def write_plot(rows: Sequence[Row], path: Path, title: str) -> None:
    """Draw tokens/s of every row that ran into ``path`` (PNG)."""
    plt = _pyplot()
    devices: dict[str, set[str]] = {}
    for r in rows:
        devices.setdefault(r.engine, set()).add(r.device)

    def series(r: Row) -> str:  # an engine on several devices (the baseline beside cpu and cuda) gets a bar each
        return f"{r.engine} ({r.device})" if len(devices[r.engine]) > 1 else r.engine

    engines = list(dict.fromkeys(series(r) for r in rows))
    keys = list(dict.fromkeys(r.config_key for r in rows))
    labels = {}
    for r in rows:
        tp = f" tp{r.tp}" if r.tp > 1 else ""
        labels.setdefault(r.config_key, f"{r.test} @ d{r.depth}\n{r.dtype} {r.quant} b{r.batch}{tp}")
    by = {(series(r), r.config_key): r for r in rows if r.status == OK}
    width = 0.8 / max(1, len(engines))
    figure, axes = plt.subplots(figsize=(max(6.0, 0.8 * len(keys) * len(engines)), 4.5))
    for i, engine in enumerate(engines):
        xs, heights, errors = [], [], []
        for k, key in enumerate(keys):
            row = by.get((engine, key))
            if row is None:
                continue
            xs.append(k + (i - (len(engines) - 1) / 2) * width)
            heights.append(row.tokens_per_s)
            errors.append(row.tokens_per_s_std or 0.0)
        axes.bar(xs, heights, width, yerr=errors, capsize=3, label=engine)
    axes.set_xticks(range(len(keys)))
    axes.set_xticklabels([labels[k] for k in keys], fontsize=8)
    axes.set_ylabel("tokens/s (mean ± stddev)")
    axes.set_title(title, fontsize=10)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=120)
    plt.close(figure)
