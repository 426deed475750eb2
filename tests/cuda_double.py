"""``ContextCountingCuda``: torch.cuda's device queries over made-up devices, recording which devices got a context.

A CUDA context costs about half a GiB on its device and, under the EXCLUSIVE_PROCESS compute mode, cannot be had on
a device another process uses, so which calls create one matters. The CUDA Runtime API ("Interactions with the CUDA
Driver API") initialises a device's primary context at the first call that needs an active context, and
``cudaSetDevice`` makes it current (initialising it since CUDA 12); ``cudaGetDeviceCount`` and
``cudaGetDeviceProperties`` need none. So here ``mem_get_info`` and ``set_device`` mark their device, while
``device_count``, ``get_device_properties``, ``get_device_capability`` and ``current_device`` mark nothing; NVML
(``device_memory_used``) needs no context either and is present only when ``nvml`` is True, as when nvidia-ml-py is
installed. Any other torch.cuda call the code under test makes is the real one, which fails on a machine without a
GPU: the double does not hide a new kind of query.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

GIB = 2**30
QUERIES = (
    "is_available",
    "device_count",
    "get_device_properties",
    "get_device_capability",
    "current_device",
    "set_device",
    "mem_get_info",
    "device_memory_used",
)


class ContextCountingCuda:
    """Stands in for torch.cuda's device queries (``install``); ``contexts`` is the set of devices given a context."""

    def __init__(self, props: list[SimpleNamespace], nvml: bool = False, used_bytes: int = 10 * GIB) -> None:
        self.props = props
        self.nvml = nvml
        self.used_bytes = used_bytes
        self.current = 0
        self.contexts: set[int] = set()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> ContextCountingCuda:
        for name in QUERIES:
            monkeypatch.setattr(torch.cuda, name, getattr(self, name), raising=False)
        return self

    def _index(self, device: int | torch.device | None) -> int:
        if device is None:
            return self.current
        index = device.index if isinstance(device, torch.device) else device
        return self.current if index is None else int(index)

    def is_available(self) -> bool:
        return bool(self.props)

    def device_count(self) -> int:
        return len(self.props)

    def get_device_properties(self, device: int | None = None) -> SimpleNamespace:
        return self.props[self._index(device)]

    def get_device_capability(self, device: int | None = None) -> tuple[int, int]:
        props = self.props[self._index(device)]
        return props.major, props.minor

    def current_device(self) -> int:
        return self.current

    def set_device(self, device: int | torch.device) -> None:
        self.current = self._index(device)
        self.contexts.add(self.current)

    def mem_get_info(self, device: int | None = None) -> tuple[int, int]:
        index = self._index(device)
        self.contexts.add(index)
        total = self.props[index].total_memory
        return total // 2, total

    def device_memory_used(self, device: int | None = None) -> int:
        if not self.nvml:
            raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed or it can't be imported.")
        return self.used_bytes


def h100(**overrides: object) -> SimpleNamespace:
    """An H100 SXM's properties as ``torch.cuda.get_device_properties`` gives them."""
    fields = dict(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132, total_memory=80 * GIB)
    return SimpleNamespace(**{**fields, **overrides})
