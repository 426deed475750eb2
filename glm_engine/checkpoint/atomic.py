"""Write files so that an interrupted write never leaves something that looks complete."""

from __future__ import annotations

import functools
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
        os.chmod(tmp, file_mode())  # safetensors creates its files 0600: a shared model folder must stay readable
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@functools.cache
def file_mode() -> int:
    """The mode a new file gets here: 0666 less the process's umask (read once: reading it means setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(final: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result into place only if it returns."""
    with atomic_path(final) as tmp:
        write(tmp)


def fsync_file(path: Path) -> None:
    """Flush ``path``'s content to disk (staged_folder fsyncs directories and expects files already flushed)."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def write_durably(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` and flush it to disk: a file written into a staged folder."""
    path.write_text(text, encoding="utf-8")
    fsync_file(path)


STAGING_TAG = ".partial-"


@contextmanager
def staged_folder(final: str | Path, markers: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a hidden staging folder to fill; move its content to ``final`` only when the block completes.

    ``final`` must not exist yet, or be an empty folder (also a symlink to one or a mount point: then the staging
    folder is made inside it, so everything stays on ``final``'s file system). Entries named in ``markers`` (what
    makes a folder look like a checkpoint, e.g. ``latest``) are moved last. An interrupted conversion leaves only the
    hidden ``.NAME.partial-PID`` folder, never something that looks complete.
    """
    final = Path(final)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise FileExistsError(f"{final} already exists and is not empty; choose a new output folder or remove it")
    inside = final.is_dir()
    staging = (
        final / f"{STAGING_TAG}{os.getpid()}" if inside else final.with_name(f".{final.name}{STAGING_TAG}{os.getpid()}")
    )
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
        _fsync_tree(staging)
        if inside:
            entries = sorted(staging.iterdir(), key=lambda p: p.name in markers)
            for entry in entries:
                os.replace(entry, final / entry.name)
            staging.rmdir()
            _fsync_directory(final)
        else:
            os.replace(staging, final)
            _fsync_directory(final.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def stale_staging_folders(final: str | Path) -> list[Path]:
    """Staging folders that earlier, interrupted conversions to ``final`` left behind."""
    final = Path(final)
    found = list(final.parent.glob(f".{final.name}{STAGING_TAG}*")) if final.parent.is_dir() else []
    if final.is_dir():
        found += list(final.glob(f"{STAGING_TAG}*"))
    return sorted(found)


def _fsync_tree(folder: Path) -> None:
    """fsync every directory under ``folder`` (files are fsynced as they are written)."""
    for directory, _, _ in os.walk(folder):
        _fsync_directory(Path(directory))


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
