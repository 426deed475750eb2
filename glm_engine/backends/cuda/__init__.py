"""The NVIDIA CUDA backend (torch CUDA; NCCL for tensor parallelism).

``backend.py``: :class:`CudaBackend`, its availability and device naming; ``platform.py``: what the NVIDIA driver and
torch report (driver version, ``sm_XY``, bf16); ``ops.py``: :class:`~glm_engine.backends.cuda.ops.CudaOps` and the
CUDA attention policy. What CUDA shares with ``rocm_dcu`` (device listing, op table, attention machinery, CUDA-graph
decode) is the ``torch.cuda`` base in ``backends/torch_cuda/``.
"""

from glm_engine.backends.cuda.backend import CudaBackend

__all__ = ["CudaBackend"]
