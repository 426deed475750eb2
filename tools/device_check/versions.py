"""Step 1: the software and the devices: python, torch (CUDA/HIP, cuDNN, NCCL), Triton, the driver, each GPU, which
of the package's optional dependencies are installed, and every backend's availability verdict."""

from __future__ import annotations

import importlib
import importlib.util
import platform
import sys
from collections.abc import Sequence

import torch

from tools.device_check.common import PASSED, arguments, summary, table

# What the other steps import beyond torch (tests need pytest; the tiny models need the tokenizer libraries).
OPTIONAL = ("triton", "pytest", "numpy", "sentencepiece", "tiktoken", "tokenizers", "typer", "rich", "pynvml", "amdsmi")


def versions() -> list[list[str]]:
    rows = [["python", platform.python_version()], ["torch", torch.__version__]]
    built = (
        f"CUDA {torch.version.cuda}"
        if torch.version.cuda
        else (f"HIP {torch.version.hip}" if torch.version.hip else "")
    )
    rows.append(["torch built for", built or "the CPU only (no CUDA/HIP)"])
    if torch.backends.cudnn.is_available():
        rows.append(["cuDNN", str(torch.backends.cudnn.version())])
    nccl = getattr(torch.cuda, "nccl", None)
    if torch.cuda.is_available() and nccl is not None and torch.version.cuda:
        rows.append(["NCCL", ".".join(map(str, nccl.version()))])
    for name in OPTIONAL:
        found = importlib.util.find_spec(name) is not None
        version = _version(name) if found else "not installed"
        rows.append([name, version])
    return rows


def _version(name: str) -> str:
    """The distribution's version, else the module's ``__version__`` (ROCm's Triton ships as pytorch-triton-rocm)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version({"pynvml": "nvidia-ml-py"}.get(name, name))
    except PackageNotFoundError:
        try:
            return str(getattr(importlib.import_module(name), "__version__", "installed"))
        except Exception as exc:  # a module that is there but does not import is worth a line of its own
            return f"installed, does not import: {type(exc).__name__}: {exc}"[:120]


def devices() -> list[list[object]]:
    from glm_engine.backends.registry import REGISTRY

    rows = []
    for backend in REGISTRY.all():
        verdict = backend.availability()
        rows.append([backend.name, "available" if verdict else "no", verdict.reason])
        if verdict and backend.device_type != "cpu":
            for device in backend.devices():
                free = f"{device.free_memory_bytes / 2**30:.1f} GiB free of " if device.free_memory_bytes else ""
                memory = f"{free}{(device.total_memory_bytes or 0) / 2**30:.1f} GiB"
                rows.append([f"  {backend.name}:{device.index}", device.name, f"{memory}; {device.detail}"])
    return rows


def _stack() -> str:
    """CUDA/HIP, cuDNN and Triton versions in one phrase."""
    parts = [
        f"CUDA {torch.version.cuda}"
        if torch.version.cuda
        else f"HIP {torch.version.hip}"
        if torch.version.hip
        else "CPU build"
    ]
    if torch.backends.cudnn.is_available():
        parts.append(f"cuDNN {torch.backends.cudnn.version()}")
    parts.append(f"Triton {_version('triton')}" if importlib.util.find_spec("triton") else "no Triton")
    return ", ".join(parts)


def _gpus() -> str:
    """Each GPU model with its architecture, and the driver: what the summary row says about the hardware."""
    from glm_engine.backends.registry import REGISTRY

    for backend in REGISTRY.all():
        if backend.device_type == "cuda" and backend.availability():
            infos = backend.devices()
            names = sorted({f"{d.name} ({d.capability})" for d in infos})
            driver = backend.driver_version() or "unknown"
            return f"{len(infos)} GPU(s): {', '.join(names)}; driver {driver}"
    return "no GPU"


def main(argv: Sequence[str] | None = None) -> int:
    arguments(__doc__.split("\n")[0], argv)
    print(table(["software", "version"], versions()), "\n")
    print(table(["backend / device", "state", "detail"], devices()), "\n")
    summary(f"torch {torch.__version__}, {_stack()}; {_gpus()}")
    return PASSED


if __name__ == "__main__":
    sys.exit(main())
