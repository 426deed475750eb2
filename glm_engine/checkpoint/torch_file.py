"""Reading ``torch.save`` files safely: ``weights_only=True`` (a checkpoint must never run code) and memory-mapped.

Besides tensors and plain containers, numpy arrays are allowed as data: SAT's own ``save_checkpoint`` stores the
numpy random state (``np_rng_state``) next to ``module``, and refusing it would refuse SAT-trained checkpoints.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from glm_engine.errors import CheckpointError


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


def load_torch_file(path: Path) -> object:
    """The unpickled content of ``path``: tensors, plain containers and numpy arrays only, memory-mapped (legacy
    non-zip files, which cannot be mapped, are read whole). Anything else is refused with a CheckpointError."""
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" (it refers to {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path} holds Python objects other than tensors, plain containers and numpy arrays{what}, so it is "
            "refused: a checkpoint must not be able to run code. If you trust the file, re-save only its weights: "
            "torch.save({'module': torch.load(PATH, weights_only=False)['module']}, PATH)"
        ) from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
