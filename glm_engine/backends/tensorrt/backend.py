"""TensorRT backend declaration: a graph-level backend running engines built by ``glm-engine export tensorrt``.

It needs the ``tensorrt`` package and a CUDA device (checked without creating a device context); TensorRT itself is
imported only when an engine is opened.
"""

from __future__ import annotations

import torch

from glm_engine.backends.base import GraphLevelBackend, ModelRunner, Verdict
from glm_engine.backends.tensorrt.build import tensorrt_missing_reason
from glm_engine.errors import BackendError
from glm_engine.exported.ops import EXPORTED_OPS, unexported_reason
from glm_engine.ops.interface import Op
from glm_engine.quant.formats import QuantFormat


class TensorRTBackend(GraphLevelBackend):
    name = "tensorrt"
    device_type = "cuda"
    dist_backend = "nccl"
    priority = 40
    description = "NVIDIA TensorRT engines built from the ONNX export"

    def availability(self) -> Verdict:
        reason = tensorrt_missing_reason()
        if reason is not None:
            return Verdict(False, reason)
        return Verdict(True, "runs engine folders made by `glm-engine export tensorrt`")

    def implemented_ops(self) -> frozenset[Op]:
        return EXPORTED_OPS  # what exported graphs can hold (glm_engine/exported/ops.py)

    def supports(self, op: Op, dtype: torch.dtype, quant_format: QuantFormat | str | None = None) -> Verdict:
        if op not in EXPORTED_OPS:
            return Verdict(False, unexported_reason(op))
        return super().supports(op, dtype, quant_format)

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        return (torch.float16, torch.bfloat16, torch.float32)

    def load_runner(
        self, artifact: str, dtype: torch.dtype | None = None, device_index: int = 0, **options: object
    ) -> ModelRunner:
        """Open an engine folder; the engine's precision is the export's (``dtype`` must match when given)."""
        verdict = self.availability()
        if not verdict:
            raise BackendError(f"tensorrt cannot run {artifact}: {verdict.reason}")
        from glm_engine.backends.tensorrt.runner import TrtRunner

        runner = TrtRunner(artifact, device_index)
        if dtype is not None and dtype != runner.dtype:
            raise BackendError(f"{artifact} was built in {runner.dtype}; drop --dtype or rebuild from another export")
        return runner
