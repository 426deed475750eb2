"""The AMD ROCm and Hygon DCU backend (a ROCm/DTK build of torch: HIP behind ``torch.cuda``; RCCL via ``nccl``).

``backend.py``: :class:`RocmDcuBackend`, its availability and device naming; ``arch.py``: AMD Instinct vs Hygon DCU
from the gfx name; ``ops.py``: :class:`~glm_engine.backends.rocm_dcu.ops.RocmOps` and the ROCm attention policy.
What it shares with ``cuda`` is the ``torch.cuda`` base in ``backends/torch_cuda/``.
"""

from glm_engine.backends.rocm_dcu.backend import RocmDcuBackend

__all__ = ["RocmDcuBackend"]
