"""The ONNX Runtime backend: a graph-level backend that runs a folder made by ``glm-engine export onnx``.

``onnxruntime`` is imported inside the methods, so a missing or broken install only makes this backend unavailable
(with the reason), never breaks ``import glm_engine``.
"""

from __future__ import annotations

import importlib.util

import torch

from glm_engine.backends.base import DeviceInfo, GraphLevelBackend, ModelRunner, Verdict
from glm_engine.backends.onnxruntime.providers import choose_provider, installed_providers, provider_report
from glm_engine.errors import BackendError
from glm_engine.exported.names import FILES_SECTION
from glm_engine.exported.ops import EXPORTED_OPS, unexported_reason
from glm_engine.ops.interface import Op
from glm_engine.quant.formats import QuantFormat

# Session option that keeps ORT from fusing DequantizeLinear + MatMul into an int8-activation MatMulNBits
# (accuracy level 4, ~5e-3 relative error; docs/export.md#quantized-linears-in-onnx): exported QDQ graphs run as
# exported.
QDQ_ACCURACY_KEY = "session.qdq_matmulnbits_accuracy_level"
SPINNING_KEY = "session.intra_op.allow_spinning"
# Said when a folder from before the ``files`` section fails to open (docs/export.md#checking-the-files).
UNCHECKED = (
    " (the folder's files were not checked: it was exported before glm-engine recorded their sizes and checksums; "
    "if it may be damaged, re-export it)"
)


def session_errors() -> tuple[type[Exception], ...]:
    """What creating an ORT session raises for a model it cannot load: the exceptions of ORT's compiled module (they
    share no base class but ``Exception``) and the ``RuntimeError``/``ValueError`` of its Python layer."""
    from onnxruntime.capi import onnxruntime_pybind11_state as compiled

    found = (c for c in vars(compiled).values() if isinstance(c, type) and issubclass(c, Exception))
    return (RuntimeError, ValueError, *found)


class OnnxRuntimeBackend(GraphLevelBackend):
    name = "onnxruntime"
    device_type = "cpu"  # the runner's tensors; ORT moves them to the provider's device
    dist_backend = "none"
    priority = 10
    description = "ONNX Runtime running the ONNX export (CPU, CUDA, TensorRT, MIGraphX, CANN providers)"

    def availability(self) -> Verdict:
        if importlib.util.find_spec("onnxruntime") is None:
            return Verdict(False, "the onnxruntime package is not installed (pip install 'glm-engine[onnx]')")
        available = installed_providers()
        if not available:
            return Verdict(False, "onnxruntime is installed but does not import; reinstall it")
        found, missing = provider_report(available)
        why_not = "; ".join(f"{short}: {reason}" for short, reason in missing.items())
        return Verdict(
            True, f"providers {', '.join(p.short for p in found)}" + (f" (not here: {why_not})" if why_not else "")
        )

    def devices(self) -> list[DeviceInfo]:
        """One entry per execution provider this onnxruntime build has; the last says why the others are missing."""
        found, missing = provider_report(installed_providers())
        chosen, _ = choose_provider(None, installed_providers()) if found else (None, "")
        out = [
            DeviceInfo(i, p.ort_name, detail="automatic choice" if p is chosen else ("--ort-provider " + p.short))
            for i, p in enumerate(found)
        ]
        if out and missing:
            not_here = "; ".join(f"{short}: {reason}" for short, reason in missing.items())
            last = out[-1]
            out[-1] = DeviceInfo(last.index, last.name, detail=f"{last.detail}. Not here: {not_here}")
        return out

    def implemented_ops(self) -> frozenset[Op]:
        return EXPORTED_OPS  # what exported graphs can hold (glm_engine/exported/ops.py)

    def supports(self, op: Op, dtype: torch.dtype, quant_format: QuantFormat | str | None = None) -> Verdict:
        if op not in EXPORTED_OPS:
            return Verdict(False, unexported_reason(op))
        return super().supports(op, dtype, quant_format)

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        return (torch.float32, torch.float16)

    def quant_formats(self) -> tuple[QuantFormat, ...]:
        return tuple(QuantFormat)  # as exported: MatMulNBits or DequantizeLinear

    def load_runner(
        self,
        artifact: str,
        dtype: torch.dtype | None = None,
        provider: str | None = None,
        threads: int | None = None,
    ) -> ModelRunner:
        """Open an exported folder; ``provider`` is a short name (``cpu``, ``cuda`` ...) or None for the best one
        installed; ``threads`` sets ORT's intra-op threads (default: torch's thread count, for comparable runs)."""
        import onnxruntime as ort
        from glm_engine.backends.onnxruntime.runner import OrtRunner, check_runnable
        from glm_engine.exported import check_files, read_exported

        verdict = self.availability()
        if not verdict:
            raise BackendError(f"onnxruntime cannot run {artifact}: {verdict.reason}")
        info = read_exported(artifact)
        if dtype is not None and dtype != info.dtype:
            raise BackendError(
                f"{artifact} was exported in {info.dtype}; it runs only in that dtype (drop --dtype, or re-export)"
            )
        check_runnable(info)
        check_files(info.folder, info.description)  # a damaged folder is named here, not by ORT's traceback
        chosen, _ = choose_provider(provider, installed_providers())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.add_session_config_entry(QDQ_ACCURACY_KEY, "0")
        # ORT's pool spins between runs by default, taking the cores from torch (sampling, the cache) and from
        # anything else in the process: measured 3x slower engine steps interleaved with a spinning session.
        options.add_session_config_entry(SPINNING_KEY, "0")
        providers = [chosen.ort_name] + (["CPUExecutionProvider"] if chosen.short != "cpu" else [])
        try:
            session = ort.InferenceSession(str(info.model_file), options, providers=providers)
        except session_errors() as exc:
            unchecked = "" if FILES_SECTION in info.description else UNCHECKED
            raise BackendError(
                f"onnxruntime ({chosen.ort_name}) could not open {info.folder}: {' '.join(str(exc).split())}{unchecked}"
            ) from exc
        active = session.get_providers()[0]
        if active != chosen.ort_name:
            raise BackendError(
                f"{chosen.ort_name} is in this onnxruntime build but did not start (ORT fell back to {active}); "
                "check the device and its driver/runtime libraries"
            )
        return OrtRunner(info, session, active, (chosen.kv_device, 0))
