"""Triton kernels for the ``torch.cuda`` backends (CUDA, and ROCm/Hygon DCU through HIP builds of torch and Triton).

``triton`` is imported lazily: :func:`triton_verdict` says whether the kernels can run here, and why not, without
importing the kernel module. ``TRITON_INTERPRET=1`` runs the same kernels on CPU tensors (slowly), which is how the
test suite checks them on machines without a GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from functools import lru_cache


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@lru_cache(maxsize=1)
def triton_verdict() -> tuple[bool, str]:
    """``(ok, reason)``: whether ``triton`` imports here; the reason says what to install when it does not."""
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install 'glm-engine[cuda]', or the triton your torch build ships)"
    try:
        importlib.import_module("triton.language")
    except Exception as exc:  # a broken install surfaces as ImportError/RuntimeError/OSError
        return False, f"triton is installed but failed to import ({type(exc).__name__}: {exc})"
    return True, "triton available"
