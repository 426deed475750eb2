"""The CPU backend: the reference every other backend is compared with, and the default."""

from glm_engine.backends.cpu.backend import CpuBackend

__all__ = ["CpuBackend"]
