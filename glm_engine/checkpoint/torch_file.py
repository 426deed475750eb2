"""Reading ``torch.save`` files safely: ``weights_only=True`` (a checkpoint must never run code) and memory-mapped.

Besides tensors and plain containers, numpy arrays are allowed as data: SAT's own ``save_checkpoint`` stores the
numpy random state (``np_rng_state``) next to ``module``, and refusing it would refuse SAT-trained checkpoints.

A zip-format file's structure is checked before ``torch.load`` sees it (``docs/checkpoints.md#damaged-files``):
torch finds each tensor's bytes through the record's local zip header and never compares the CRC-32 the writer
recorded, so one damaged header byte would shift a tensor's data silently, and a damaged pickle could rebuild a
tensor with other strides. Every record's local header must agree with the central directory, and the small
metadata records (the pickle, ``byteorder``, ``version``) must match their CRC-32. The tensor bytes themselves are
not checksummed here: that would read the whole file before the memory-mapped load.
"""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from glm_engine.errors import CheckpointError

# What to do about a file that is damaged or incomplete.
DAMAGED_ADVICE = "the file is damaged or incomplete (an interrupted download or copy?): download or convert it again"
ZIP_MAGIC = b"PK\x03\x04"
# A zip local file header: signature, version, flags, method, time, date, CRC-32, sizes, name and extra lengths.
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_DESCRIPTOR_MAGIC = b"PK\x07\x08"
_HAS_DESCRIPTOR = 0x08  # general-purpose flag bit 3: CRC-32 and sizes follow the data
_UTF8_NAMES = 0x800  # flag bit 11: names are UTF-8 (else code page 437)
_DOS_DIRECTORY = 0x10  # external attribute bit that makes torch's zip reader (miniz) treat a record as a folder
# torch.save's tensor storages: "<archive>/data/<key>"; every other record is metadata.
_STORAGE_RECORD = re.compile(r"(?:^|/)data/[^/]+$")


def _numpy_data_globals() -> list[Any]:
    """The numpy names an ndarray pickle refers to (under numpy 1.x and 2.x names), none of which runs code."""
    try:
        import numpy as np
    except ImportError:
        return []
    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    names = [n for n in dir(getattr(np, "dtypes", object)) if n.endswith("DType")]
    return [
        np.ndarray,
        np.dtype,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        *(getattr(np.dtypes, n) for n in names),
    ]


def _record_start(handle: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Where ``info``'s data begins, after checking its local header against the central directory."""
    handle.seek(info.header_offset)
    header = handle.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size:
        raise zipfile.BadZipFile(f"the local header of {info.filename} lies past the end of the file")
    if info.external_attr & _DOS_DIRECTORY:
        raise zipfile.BadZipFile(f"the central directory marks {info.filename} as a folder")
    magic, _, flags, _, _, _, crc, _, _, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    name = handle.read(name_length)
    if magic != ZIP_MAGIC or name != info.orig_filename.encode("utf-8" if flags & _UTF8_NAMES else "cp437"):
        raise zipfile.BadZipFile(f"the local header of {info.filename} does not match the central directory")
    start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    if flags & _HAS_DESCRIPTOR:  # the signature is optional in the format, but torch's writer always puts it there
        handle.seek(start + info.compress_size)
        descriptor = handle.read(8)
        found = len(descriptor) == 8 and descriptor[:4] == _DESCRIPTOR_MAGIC
        crc = struct.unpack("<I", descriptor[4:])[0] if found else None
    if crc != info.CRC:
        raise zipfile.BadZipFile(f"the headers of {info.filename} disagree on where its data ends or on its CRC-32")
    return start


def check_zip_structure(path: Path) -> None:
    """Refuse a zip-format ``torch.save`` file whose structure is damaged (see the module docstring); a legacy
    (non-zip) file is left to ``torch.load``."""
    try:
        with path.open("rb") as handle:
            if handle.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
                if zipfile.is_zipfile(handle):  # a zip's end records, but the start is damaged
                    raise zipfile.BadZipFile("it does not start with a zip header")
                return
            with zipfile.ZipFile(handle) as archive:
                infos = sorted(archive.infolist(), key=lambda info: info.header_offset)
                ends = [info.header_offset for info in infos[1:]] + [archive.start_dir]
                for info, end in zip(infos, ends):
                    start = _record_start(handle, info)
                    if start + info.compress_size > end:
                        raise zipfile.BadZipFile(f"{info.filename} runs into the next record")
                    if info.CRC and not _STORAGE_RECORD.search(info.filename):  # CRC 0: the writer recorded none
                        archive.read(info)  # checks the CRC-32
    # zipfile's signs of a malformed central directory: a bad name encoding (UnicodeDecodeError), an offset past the
    # end (ValueError), flags it cannot honour (NotImplementedError: compression, RuntimeError: encryption)
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a valid torch.save zip archive ({exc}); {DAMAGED_ADVICE}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def load_torch_file(path: Path) -> object:
    """The unpickled content of ``path``: tensors, plain containers and numpy arrays only, memory-mapped (legacy
    non-zip files, which cannot be mapped, are read whole). Anything else is refused with a CheckpointError."""
    check_zip_structure(path)
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            # torch's weights-only unpickler reads a legacy pickle cut short with struct.unpack and indexing
            except (struct.error, IndexError) as exc:
                raise CheckpointError(f"{path} ends inside its pickled data ({exc}); {DAMAGED_ADVICE}") from None
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:  # a cut or damaged pickle, or an object the weights-only loader has no rule for
            detail = re.search(r"WeightsUnpickler error: ([^\n]*)", str(exc))
            raise CheckpointError(
                f"{path} cannot be read as weights only ({detail.group(1) if detail else str(exc)[:200]}): either "
                f"{DAMAGED_ADVICE}, or it holds Python objects other than tensors, plain containers and numpy arrays, "
                "which are refused (a checkpoint must not be able to run code)"
            ) from None
        raise CheckpointError(
            f"{path} holds Python objects other than tensors, plain containers and numpy arrays (it refers to "
            f"{found.group(1)}), so it is refused: a checkpoint must not be able to run code. If you trust the file, "
            "re-save only its weights: torch.save({'module': torch.load(PATH, weights_only=False)['module']}, PATH)"
        ) from None
    except (RuntimeError, EOFError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}; {DAMAGED_ADVICE}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
