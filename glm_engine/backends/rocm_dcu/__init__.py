"""The AMD ROCm and Hygon DCU backend (a ROCm/DTK build of torch: HIP behind ``torch.cuda``; RCCL via ``nccl``)."""

from glm_engine.backends.rocm_dcu.backend import RocmDcuBackend

__all__ = ["RocmDcuBackend"]
