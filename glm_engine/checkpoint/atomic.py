"""Write files so that an interrupted write never leaves something that looks complete."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success fsync it and rename it over ``final``."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(final: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result into place only if it returns."""
    with atomic_path(final) as tmp:
        write(tmp)


@contextmanager
def staged_folder(final: str | Path) -> Iterator[Path]:
    """Yield a hidden folder beside ``final`` to fill; rename it to ``final`` only when the block completes.

    ``final`` must not exist yet (or be an empty folder): a conversion never mixes its files with older ones, and an
    interrupted one leaves only the hidden ``.NAME.partial-PID`` folder behind, never something that looks complete.
    """
    final = Path(final)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise FileExistsError(f"{final} already exists and is not empty; choose a new output folder or remove it")
    staging = final.with_name(f".{final.name}.partial-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
        _fsync_directory(staging)
        if final.exists():
            final.rmdir()
        os.replace(staging, final)
        _fsync_directory(final.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _fsync_directory(folder: Path) -> None:
    """Make renames inside ``folder`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
