"""Running out of space while writing: turn the libraries' many spellings of it (``OSError`` ENOSPC/EDQUOT/EFBIG,
safetensors' ``File too large``, torch.save's ``basic_ios::clear``) into one line that names the file and the space
it needed, and refuse a conversion up front when the file system cannot hold its output (docs/checkpoints.md)."""

from __future__ import annotations

import errno
import resource
import shutil
import tempfile
from pathlib import Path

from glm_engine.errors import OutputError

SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# What safetensors (Rust io::Error text) and torch.save (C++ iostream) say when a write fails for lack of space.
SPACE_WORDS = ("no space left", "file too large", "disk quota", "basic_ios", "iostream error", "failed writing file")


def human_bytes(count: float) -> str:
    """``1.5 GiB``, ``12.0 MiB``, ``300 B``: sizes as a user reads them."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


def free_bytes(path: Path) -> int:
    """Free bytes (for this user) on the file system that ``path`` is, or would be created, on."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def file_size_limit() -> int | None:
    """The largest file this process may write (``ulimit -f``), or None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def space_error(exc: BaseException, path: Path, needed: int | None) -> OutputError | None:
    """The one-line error for ``exc``, raised while writing ``path`` (``needed`` bytes), if space ran out, else None.

    An ``OSError`` says so by its errno; the libraries' own exceptions by their wording or, failing that (torch.save
    may report a later, unrelated-looking assertion), by a measured shortage: less free space or a lower file-size
    limit than the write needed.
    """
    if isinstance(exc, OutputError):
        return None  # already said, by the write closest to the file
    limit = file_size_limit()
    over_limit = limit is not None and needed is not None and needed > limit
    if isinstance(exc, OSError):
        if exc.errno not in SPACE_ERRNOS:
            return None
        over_limit = over_limit or exc.errno == errno.EFBIG
    elif not any(word in str(exc).lower() for word in SPACE_WORDS) and not (over_limit or _short_of(path, needed)):
        return None
    size = f"about {human_bytes(needed)}" if needed else "more than that"
    if over_limit or "too large" in str(exc).lower():
        shown = human_bytes(limit) if limit is not None else "the file system's largest file"
        return OutputError(
            f"could not write {path}: it needs {size}, over the largest file this process may write ({shown}, "
            "ulimit -f); raise that limit, or write smaller files where the command offers it (--shard-size-gb)"
        )
    return OutputError(
        f"could not write {path}: no space left on its file system ({human_bytes(free_bytes(path))} free, the file "
        f"needs {size}); free some space or write to another folder"
    )


def _short_of(path: Path, needed: int | None) -> bool:
    """Whether ``path``'s file system lacks room for ``needed`` bytes (counting what a partial file already holds)."""
    if needed is None:
        return False
    written = 0
    for partial in path.parent.glob(f".{path.name}.tmp-*") if path.parent.is_dir() else []:
        written += partial.stat().st_size
    return free_bytes(path) + written < needed


def check_writable(output: Path) -> None:
    """Refuse an output no file can be created in (read-only mount, permissions, /sys) before anything is written or
    measured: such a file system may report 0 B free, and a space error would then blame the wrong thing.

    Probed with an anonymous temporary file where the output's staging folder goes (inside ``output`` when it is a
    folder, else its nearest existing ancestor): permission bits do not tell, root passes them all."""
    folder = Path(output).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return  # a file in the way: the output checks say so in their own words
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        if exc.errno in SPACE_ERRNOS:
            return  # the space checks name the space
        raise OutputError(
            f"cannot write {output}: {folder} takes no new files ({exc.strerror or exc}); choose a folder you can "
            "write to"
        ) from None


def check_space(output: Path, needed: int, what: str) -> None:
    """Refuse before writing anything when ``output``'s file system has less than ``needed`` bytes free (or takes no
    files at all)."""
    check_writable(output)
    free = free_bytes(output)
    if needed > free:
        raise OutputError(
            f"{what} needs about {human_bytes(needed)} but the file system of {output} has {human_bytes(free)} free; "
            "free some space or choose another output folder"
        )
