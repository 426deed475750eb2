"""Transient progress bars on stderr: one for long loads and conversions, one per data file for evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def _bars(description: str) -> Progress:
    """A transient rich progress display on stderr: description, bar, done/total, elapsed time."""
    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """Yield ``update(done, total)``; the bar disappears when the block ends."""
    with _bars(label) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@contextmanager
def file_progress() -> Iterator[Callable[[str, int, int], None]]:
    """``update(label, done, total)`` drawing one transient bar per data file on stderr."""
    with _bars("{task.description}") as bar:
        bars: dict[str, int] = {}

        def update(label: str, done: int, total: int) -> None:
            if label not in bars:
                bars[label] = bar.add_task(label, total=total)
            bar.update(bars[label], completed=done)

        yield update
