"""The NVIDIA CUDA backend (torch CUDA; NCCL for tensor parallelism)."""

from glm_engine.backends.cuda.backend import CudaBackend

__all__ = ["CudaBackend"]
