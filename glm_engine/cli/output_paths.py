"""Checks that a command can write where it was told to, made before any model loads or any compute runs, so a
typo in an output path costs a second, not the run (``docs/cli.md``: one ``error:`` line, exit 1).

Writability is probed by creating an anonymous temporary file in the folder: permission bits do not tell (root
passes every ``os.access`` check, and a read-only mount passes the bits), the file system does.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from glm_engine.errors import InputError


def _probe_writable(folder: Path, flag: str, path: Path) -> None:
    """An InputError when no file can be created in ``folder`` (an existing folder), saying why."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InputError(
            f"{flag} {path}: cannot write into {folder} ({exc.strerror or exc}); choose a folder you can write to"
        ) from None


def _existing_ancestor(path: Path) -> Path:
    """The nearest of ``path``'s ancestors that exists (the current folder for a relative path's top)."""
    for ancestor in path.absolute().parents:
        if ancestor.exists():
            return ancestor
    return Path("/")


def check_output_file(path: Path, flag: str) -> None:
    """``path`` can be written as a file: it is no folder, and its folder exists and takes new files (the file is
    replaced atomically, so only the folder's permissions matter)."""
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give the path of a file to write")
    folder = path.parent
    if not folder.exists():
        raise InputError(f"{flag} {path}: its folder {folder} does not exist; create it first or choose another path")
    if not folder.is_dir():
        raise InputError(f"{flag} {path}: {folder} is a file, not a folder; choose another path")
    _probe_writable(folder, flag, path)


def check_output_folder(path: Path, flag: str) -> None:
    """``path`` is a folder that takes new files, or one that can be created (it is created when the first file is
    written, so a run that fails early leaves nothing behind)."""
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{flag} {path} is a file; give a folder (it is created if it does not exist)")
        _probe_writable(path, flag, path)
        return
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise InputError(f"{flag} {path} cannot be created: {ancestor} is a file, not a folder; choose another path")
    _probe_writable(ancestor, flag, path)
