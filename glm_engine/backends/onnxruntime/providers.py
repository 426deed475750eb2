"""ONNX Runtime execution providers glm-engine knows: which this onnxruntime build has, which one to use, and why
the others are not used (in words a user can act on).

Facts (docs/export.md#execution-providers): CUDA and TensorRT ship in ``onnxruntime-gpu``; ORT removed its ROCm provider
in 1.23 in favour of MIGraphX (``onnxruntime-migraphx``, also the route for Hygon DCU's ROCm-compatible stack); CANN
(Ascend) is a community build (``onnxruntime-cann``). ``onnxruntime`` and ``onnxruntime-gpu`` conflict in one
environment (docs/export.md#execution-providers). TensorRT is used only when asked for: it compiles an engine when the
session starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from glm_engine.errors import BackendError


@dataclass(frozen=True)
class Provider:
    """One execution provider: the short name ``--ort-provider`` takes, ORT's name, and where it comes from."""

    short: str
    ort_name: str
    install: str
    auto: bool = True  # considered by the automatic choice
    # ORT device type the runner keeps the KV cache on (I/O binding): the provider's memory where ORT's Python API
    # names it ("cuda"), host memory otherwise (ORT copies it to the device each call, as without binding).
    kv_device: str = "cpu"


# Automatic choice goes down this list (accelerators first, the CPU last).
PROVIDERS: tuple[Provider, ...] = (
    Provider(
        "cuda",
        "CUDAExecutionProvider",
        "install onnxruntime-gpu instead of onnxruntime (NVIDIA GPUs)",
        kv_device="cuda",
    ),
    Provider(
        "migraphx",
        "MIGraphXExecutionProvider",
        "install onnxruntime-migraphx (AMD ROCm and Hygon DCU; ORT's ROCm provider was removed in 1.23)",
    ),
    Provider("rocm", "ROCMExecutionProvider", "only onnxruntime-rocm builds before ORT 1.23 have it; use migraphx"),
    Provider("cann", "CANNExecutionProvider", "install the onnxruntime-cann build with Ascend's CANN toolkit"),
    Provider(
        "tensorrt",
        "TensorrtExecutionProvider",
        "install onnxruntime-gpu with TensorRT's libraries; used only with --ort-provider tensorrt (it builds an "
        "engine when the session starts)",
        auto=False,
        kv_device="cuda",
    ),
    Provider("cpu", "CPUExecutionProvider", "part of every onnxruntime build"),
)
BY_SHORT = {p.short: p for p in PROVIDERS}


def installed_providers() -> list[str]:
    """ORT's names of the providers this onnxruntime build has (empty when onnxruntime does not import)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def provider_report(available: list[str]) -> tuple[list[Provider], dict[str, str]]:
    """``(providers found, {short name: why not usable})`` for the providers glm-engine knows."""
    found = [p for p in PROVIDERS if p.ort_name in available]
    missing = {p.short: f"not in this onnxruntime build: {p.install}" for p in PROVIDERS if p.ort_name not in available}
    return found, missing


def choose_provider(requested: str | None, available: list[str]) -> tuple[Provider, str]:
    """The provider to run with and a sentence saying why; ``requested`` is a short name (``cuda``, ``cpu`` ...)."""
    found, missing = provider_report(available)
    if requested is not None:
        wanted = BY_SHORT.get(requested.lower())
        if wanted is None:
            raise BackendError(f"unknown ONNX Runtime provider {requested!r}; known: {', '.join(BY_SHORT)}")
        if wanted not in found:
            raise BackendError(f"--ort-provider {wanted.short}: {missing[wanted.short]}")
        return wanted, f"{wanted.ort_name} as requested"
    for provider in found:
        if provider.auto:
            skipped = [s for s in missing if BY_SHORT[s].auto and s != "cpu"]
            why = f"{provider.ort_name}, the first of {', '.join(p.short for p in PROVIDERS if p.auto)} found"
            return provider, why + (f" (not in this build: {', '.join(skipped)})" if skipped else "")
    raise BackendError("this onnxruntime build has no provider glm-engine can use; reinstall onnxruntime")
