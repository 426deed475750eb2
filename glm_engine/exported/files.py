"""The ``files`` section of ``genai_config.json``: every file an exported folder holds (``genai_config.json`` aside),
with its size and sha256, written when the folder is made and checked before a runtime opens it, so a truncated or
damaged folder is one error naming the file instead of a runtime's traceback (docs/export.md#checking-the-files).

Checks (:func:`check_files`): every listed file exists with its recorded size, always (a ``stat`` each); the sha256 of
files up to :data:`ALWAYS_HASHED_BYTES` (the graph, the tokenizer) at every load; the sha256 of larger ones (the
weights, an engine) the first time this user opens them, remembered in a stamp under :data:`STAMP_DIR` keyed by the
file's path, size, mtime, ctime and inode, so it is hashed again only once it changed. ``GLM_ENGINE_VERIFY_FILES``
picks another policy (:data:`POLICIES`). A folder written before the section existed is not checked.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from glm_engine.checkpoint.atomic import write_atomically
from glm_engine.errors import CheckpointError, InputError
from glm_engine.exported.names import FILES_SECTION, GENAI_CONFIG_FILE, TENSORRT_SECTION

# Files up to this size are hashed at every load: hashing 64 MiB takes tens of milliseconds, less than opening them.
ALWAYS_HASHED_BYTES = 64 << 20
HASH_CHUNK = 8 << 20  # bytes read at a time: files can be hundreds of GB
STAMP_DIR = Path.home() / ".cache" / "glm-engine" / "verified"
POLICY_VARIABLE = "GLM_ENGINE_VERIFY_FILES"
POLICIES = {
    "once": "sizes always; checksums of small files always, of large files once until they change (the default)",
    "always": "sizes and every checksum at every load",
    "sizes": "sizes always; checksums of small files only",
}


def file_sha256(path: Path) -> str:
    """The sha256 of ``path``'s content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def file_records(folder: Path, names: Iterable[str], known: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``files`` section for ``names`` in ``folder``: ``{name: {"bytes": size, "sha256": hex}}``. ``known`` gives
    digests already computed while the file was written (the weights), so those files are not read again."""
    known = known or {}
    return {
        name: {"bytes": (folder / name).stat().st_size, "sha256": known.get(name) or file_sha256(folder / name)}
        for name in names
    }


def verify_policy() -> str:
    """The checksum policy ``GLM_ENGINE_VERIFY_FILES`` names (``once`` when unset)."""
    policy = os.environ.get(POLICY_VARIABLE, "").strip().lower() or "once"
    if policy not in POLICIES:
        raise InputError(f"{POLICY_VARIABLE}={policy!r} is not a policy; use one of {', '.join(POLICIES)}")
    return policy


def check_files(folder: str | Path, description: dict[str, Any]) -> None:
    """A CheckpointError naming the first file of ``folder`` that is missing, has another size than recorded, or
    (under :func:`verify_policy`) another sha256; nothing for an intact folder or one without a ``files`` section."""
    folder = Path(folder)
    files = description.get(FILES_SECTION)
    if files is None:
        return  # written before glm-engine recorded its files: nothing to check against
    records = _records(files, folder)
    policy = verify_policy()
    remedy = _remedy(description)
    for name, (size, _) in records.items():  # every size first: a truncated file is found without hashing any
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing from the exported folder: {remedy}")
        found = path.stat().st_size
        if found != size:
            how = "truncated" if found < size else "damaged"
            raise CheckpointError(f"{path} has {found} bytes where the export wrote {size} ({how}): {remedy}")
    for name, (size, sha256) in records.items():
        path = folder / name
        large = size > ALWAYS_HASHED_BYTES
        if large and (policy == "sizes" or (policy == "once" and _stamped(path, sha256))):
            continue
        identity = _identity(path)  # before reading: a file changed while hashed does not match its stamp later
        digest = file_sha256(path)
        if digest != sha256:
            raise CheckpointError(
                f"{path} has sha256 {digest[:16]}... where the export recorded {sha256[:16]}... (damaged): {remedy}"
            )
        if large and policy == "once":
            _stamp(path, {**identity, "sha256": sha256})


def _records(files: object, folder: Path) -> dict[str, tuple[int, str]]:
    """The ``files`` section as ``{name: (bytes, sha256)}``, or a CheckpointError when it is malformed."""
    where = f"{folder / GENAI_CONFIG_FILE}'s {FILES_SECTION!r} section"
    if not isinstance(files, dict):
        raise CheckpointError(f"{where} is not an object: the file is damaged; re-export the model")
    records = {}
    for name, record in files.items():
        ok = isinstance(record, dict) and isinstance(record.get("bytes"), int) and isinstance(record.get("sha256"), str)
        if not ok or Path(name).name != name:  # a plain file name inside the folder
            raise CheckpointError(f"{where} has a malformed entry {name!r}: the file is damaged; re-export the model")
        records[name] = (record["bytes"], record["sha256"])
    return records


def _remedy(description: dict[str, Any]) -> str:
    """What to do about a damaged folder: copy it again, or make it again with the command that made it."""
    command = "glm-engine export tensorrt" if TENSORRT_SECTION in description else "glm-engine export onnx"
    return f"copy the folder again, or re-create it with `{command}`"


def _identity(path: Path) -> dict[str, Any]:
    """What changes when a file's content can have changed: its size, mtime, ctime and inode."""
    stat = path.stat()
    return {
        "path": str(path.resolve()),
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
        "inode": stat.st_ino,
    }


def _stamp_file(path: Path) -> Path:
    return STAMP_DIR / (hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32] + ".json")


def _stamped(path: Path, sha256: str) -> bool:
    """Whether ``path`` was hashed to ``sha256`` before and has not changed since."""
    try:
        stamp = json.loads(_stamp_file(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stamp == {**_identity(path), "sha256": sha256}


def _stamp(path: Path, stamp: dict[str, Any]) -> None:
    """Remember that ``path`` (as :func:`_identity` saw it) hashed to ``stamp["sha256"]``; a cache that cannot be
    written only means hashing the file again next time."""
    text = json.dumps(stamp)
    try:
        STAMP_DIR.mkdir(parents=True, exist_ok=True)
        write_atomically(_stamp_file(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError:
        pass
