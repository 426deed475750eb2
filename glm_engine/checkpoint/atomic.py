"""Write files so that an interrupted write never leaves something that looks complete."""

from __future__ import annotations

import errno
import functools
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from glm_engine.checkpoint.space import check_writable, space_error
from glm_engine.checkpoint.staging import STAGING_TAG, remove_stale, staging_folders, staging_name
from glm_engine.errors import OutputError


@contextmanager
def atomic_path(final: str | Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success fsync it and rename it over ``final``.

    A write that fails for lack of space (``needed``: the bytes it was to write, when known) becomes an
    ``OutputError`` naming ``final`` and the space, whatever library raised it.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        try:
            yield tmp
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        except Exception as exc:
            error = space_error(exc, final, needed)
            if error is None:
                raise
            raise error from exc
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


def write_atomically(final: str | Path, write: Callable[[Path], None], needed: int | None = None) -> None:
    """Call ``write(tmp_path)`` and move the result into place only if it returns (``needed``: bytes it writes)."""
    with atomic_path(final, needed) as tmp:
        write(tmp)


def fsync_file(path: Path) -> None:
    """Flush ``path``'s content to disk (staged_folder fsyncs directories and expects files already flushed)."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def write_durably(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` and flush it to disk: a file written into a staged folder."""
    path.write_text(text, encoding="utf-8")
    fsync_file(path)


@contextmanager
def staged_folder(final: str | Path, markers: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a hidden staging folder to fill; move its content to ``final`` only when the block completes.

    ``final`` must not exist yet, or be an empty folder (also a symlink to one or a mount point: then the staging
    folder is made inside it, so everything stays on ``final``'s file system). Entries named in ``markers`` (what
    makes a folder look like a checkpoint, e.g. ``latest``) are moved last. An interrupted conversion leaves only the
    hidden ``.NAME.partial-PID@HOST`` folder, never something that looks complete; the next run removes it. A
    staging folder of a live process means another run is writing ``final``: refused (docs/checkpoints.md).
    """
    final = Path(final)
    _check_output_free(final)
    check_writable(final)
    remove_stale(final)
    inside = final.is_dir()
    staging = final / staging_name(final, inside) if inside else final.with_name(staging_name(final, inside))
    staging.mkdir(parents=True)
    try:
        try:
            yield staging
        except Exception as exc:  # a file written straight into the folder (not by atomic_path) ran out of space
            error = space_error(exc, Path(getattr(exc, "filename", None) or staging), None)
            if error is None:
                raise
            raise error from exc
        _fsync_tree(staging)
        _move_into_place(staging, final, inside, markers)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _check_output_free(final: Path) -> None:
    """Refuse an output that is a file, a non-empty folder, or being written by another live process."""
    for staging in staging_folders(final):
        if staging.alive:
            raise OutputError(
                f"{final} is being written by another run ({staging.describe()}, into {staging.path.name}); wait "
                f"for it to finish or choose another output (if no such run exists, remove {staging.path})"
            )
    if final.exists() and not final.is_dir():
        raise OutputError(f"{final} is a file, not a folder; choose a new output folder name or remove the file")
    if final.is_dir() and any(not entry.name.startswith(STAGING_TAG) for entry in final.iterdir()):
        raise OutputError(f"{final} already exists and is not empty; choose a new output folder or remove it")


def _move_into_place(staging: Path, final: Path, inside: bool, markers: tuple[str, ...]) -> None:
    """Rename the finished staging folder (or its entries) to ``final``; a run that wrote there meanwhile wins."""
    try:
        if inside:
            entries = sorted(staging.iterdir(), key=lambda p: p.name in markers)
            if any(not e.name.startswith(STAGING_TAG) for e in final.iterdir()):
                raise FileExistsError(errno.ENOTEMPTY, "written meanwhile", str(final))
            for entry in entries:
                os.replace(entry, final / entry.name)
            staging.rmdir()
            _fsync_directory(final)
        else:
            os.replace(staging, final)
            _fsync_directory(final.parent)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
        raise OutputError(
            f"another run wrote {final} while this one was writing; this run's output was discarded"
        ) from None


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
