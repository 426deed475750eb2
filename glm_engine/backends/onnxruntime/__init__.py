"""The ONNX Runtime backend: runs graphs made by ``glm-engine export onnx``."""

from glm_engine.backends.onnxruntime.backend import OnnxRuntimeBackend

__all__ = ["OnnxRuntimeBackend"]
