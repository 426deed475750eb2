"""The hidden ``.NAME.partial-PID@HOST`` folders conversions and exports fill before renaming them into place: which
belong to a live process (another conversion is writing there), and which an interrupted run left behind (removed,
with a note, since they can be as large as a checkpoint). See docs/checkpoints.md."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

STAGING_TAG = ".partial-"


def this_host() -> str:
    """This machine's name as it goes into a staging folder's name (safe characters only)."""
    return re.sub(r"[^A-Za-z0-9.-]", "", socket.gethostname())[:64] or "localhost"


def staging_name(final: Path, inside: bool) -> str:
    """This process's staging folder name for ``final`` (inside ``final`` when that is an existing empty folder)."""
    tag = f"{STAGING_TAG}{os.getpid()}@{this_host()}"
    return tag if inside else f".{final.name}{tag}"


@dataclass(frozen=True)
class Staging:
    """A staging folder found beside (or inside) an output, and the process that made it."""

    path: Path
    pid: int | None
    host: str | None  # None: named before hosts were recorded, so from this host

    @property
    def local(self) -> bool:
        return self.host is None or self.host == this_host()

    @property
    def alive(self) -> bool:
        """Whether the writing process may still run (a process on another host is assumed to)."""
        if self.pid is None or not self.local:
            return not self.local
        if self.pid == os.getpid():
            return False  # an earlier, finished attempt of this process
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # another user's live process
        return True

    def describe(self) -> str:
        return f"process {self.pid}" + ("" if self.local else f" on {self.host}")


def staging_folders(final: str | Path) -> list[Staging]:
    """Every staging folder of ``final``: beside it, and inside it when it is a folder."""
    final = Path(final)
    paths = list(final.parent.glob(f".{final.name}{STAGING_TAG}*")) if final.parent.is_dir() else []
    if final.is_dir():
        paths += list(final.glob(f"{STAGING_TAG}*"))
    return [_parse(path) for path in sorted(paths)]


def _parse(path: Path) -> Staging:
    owner = path.name.rsplit(STAGING_TAG, 1)[1]
    pid, _, host = owner.partition("@")
    return Staging(path, int(pid) if pid.isdigit() else None, host or None)


def stale_staging_folders(final: str | Path) -> list[Path]:
    """Staging folders of ``final`` whose process is gone (left by interrupted runs)."""
    return [staging.path for staging in staging_folders(final) if not staging.alive]


def remove_stale(final: str | Path) -> list[Path]:
    """Remove what interrupted runs left for ``final``, logging a note for each (path and space freed)."""
    removed = []
    for path in stale_staging_folders(final):
        size = _tree_bytes(path)
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
            log.warning("note: removed %s, left by an interrupted run (%.2f GiB freed)", path, size / 2**30)
    return removed


def _tree_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
