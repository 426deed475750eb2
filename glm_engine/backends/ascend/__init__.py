"""The Huawei Ascend backend (torch_npu; HCCL for tensor parallelism)."""

from glm_engine.backends.ascend.backend import AscendBackend

__all__ = ["AscendBackend"]
