"""The TensorRT backend: runs whole-graph engines built from glm-engine's ONNX export."""

from glm_engine.backends.tensorrt.backend import TensorRTBackend

__all__ = ["TensorRTBackend"]
