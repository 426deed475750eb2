"""TensorRT backend declaration: a graph-level backend; reports what it needs and whether it is present.

TensorRT runs an engine built from the ONNX export, so it needs the ``tensorrt`` package, a CUDA device, and an
engine. This version of glm-engine has no ONNX export yet, so the backend reports itself unavailable with that reason
even where TensorRT is installed.
"""

from __future__ import annotations

import importlib.util

import torch

from glm_engine.backends.base import GraphLevelBackend, ModelRunner, Verdict
from glm_engine.errors import BackendError


class TensorRTBackend(GraphLevelBackend):
    name = "tensorrt"
    device_type = "cuda"
    dist_backend = "nccl"
    priority = 40
    description = "NVIDIA TensorRT engines built from the ONNX export"

    def availability(self) -> Verdict:
        if importlib.util.find_spec("tensorrt") is None:
            return Verdict(
                False, "the tensorrt Python package is not installed (pip install tensorrt from NVIDIA's package index)"
            )
        if torch.version.cuda is None or not torch.cuda.is_available():
            return Verdict(False, "TensorRT needs a CUDA device and a CUDA build of torch; none found")
        return Verdict(
            False,
            "tensorrt is installed, but this glm-engine version cannot export engines yet (no `glm-engine export`)",
        )

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        return (torch.float16, torch.bfloat16, torch.float32)

    def load_runner(self, artifact: str, dtype: torch.dtype | None = None) -> ModelRunner:
        raise BackendError(f"tensorrt cannot run {artifact}: {self.availability().reason}")
