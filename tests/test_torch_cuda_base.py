"""The shared torch.cuda base and the vendor facts cuda and rocm_dcu plug into it, checked without a GPU.

The device listing is shared (``backends/torch_cuda/backend.py``); how a device's architecture is named and
described, the driver/runtime versions and bf16 support are each backend's own. Here ``torch.cuda``'s device queries
are stood in for, so the lines ``glm-engine backends`` would print are checked on any machine. The import-boundary
tests read the sources: a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cuda_double import GIB, ContextCountingCuda, h100

import glm_engine
import glm_engine.backends.cuda.backend as cuda_backend_module
import glm_engine.backends.rocm_dcu.backend as rocm_backend_module
from glm_engine.backends.base import Verdict
from glm_engine.backends.cuda import CudaBackend
from glm_engine.backends.cuda.platform import (
    nvidia_driver_version,
    parse_nvidia_driver_version,
    primary_context_devices,
)
from glm_engine.backends.rocm_dcu import RocmDcuBackend

PACKAGE = Path(glm_engine.__file__).parent


def fake_devices(monkeypatch, *props: SimpleNamespace, nvml: bool = False) -> ContextCountingCuda:
    """torch.cuda reports ``props`` as its devices (``mem_get_info``: half of each free), counting contexts."""
    return ContextCountingCuda(list(props), nvml=nvml).install(monkeypatch)


def available(backend):
    backend.availability = lambda: Verdict(True, "stood in")
    return backend


def test_cuda_lists_devices_by_compute_capability_with_the_nvidia_driver(monkeypatch):
    fake_devices(monkeypatch, h100())
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(cuda_backend_module, "nvidia_driver_version", lambda: "550.54.14")
    [device] = available(CudaBackend()).devices()
    assert device.capability == "sm_90" and device.name == h100().name
    assert device.detail == "sm_90, 132 SMs, driver 550.54.14, CUDA 12.4"
    assert device.free_memory_bytes == 40 * GIB and device.total_memory_bytes == 80 * GIB


def test_rocm_lists_devices_by_gfx_target_with_vendor_and_family(monkeypatch, tmp_path):
    mi250 = SimpleNamespace(
        name="AMD Instinct MI250X",
        gcnArchName="gfx90a:sramecc+:xnack-",
        multi_processor_count=104,
        total_memory=64 * GIB,
    )
    z100 = SimpleNamespace(name="DCU Z100L", gcnArchName="gfx906", multi_processor_count=60, total_memory=32 * GIB)
    fake_devices(monkeypatch, mi250, z100)
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    driver = tmp_path / "version"
    driver.write_text("6.8.5\n")
    monkeypatch.setattr(rocm_backend_module, "AMDGPU_DRIVER_FILE", driver)
    amd, dcu = available(RocmDcuBackend()).devices()
    assert amd.capability == "gfx90a" and dcu.capability == "gfx906"
    assert amd.detail == "gfx90a, AMD Instinct MI200 (CDNA2), 104 CUs, driver 6.8.5, HIP 6.2.41133"
    assert dcu.detail.startswith("gfx906, Hygon DCU Z100 family, 60 CUs")


def test_a_missing_driver_file_leaves_the_driver_out_of_the_line(monkeypatch, tmp_path):
    assert nvidia_driver_version(tmp_path / "absent") == ""
    monkeypatch.setattr(rocm_backend_module, "AMDGPU_DRIVER_FILE", tmp_path / "absent")
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    fake_devices(
        monkeypatch, SimpleNamespace(name="x", gcnArchName="gfx942", multi_processor_count=304, total_memory=1)
    )
    assert available(RocmDcuBackend()).devices()[0].detail.endswith("304 CUs, HIP 6.2.41133")


def test_listing_devices_creates_a_context_on_this_processs_device_only(monkeypatch):
    """Free memory through cudaMemGetInfo on the current device alone; the others' from NVML when it is installed,
    else unknown, and none of them gets a context (issue 19, CUDA 8)."""
    cuda = fake_devices(monkeypatch, *(h100() for _ in range(4)))
    cuda.current = 2  # a rank after set_device(2)
    backend = available(CudaBackend())
    free = [d.free_memory_bytes for d in backend.devices()]
    assert cuda.contexts == {2} and free == [None, None, 40 * GIB, None]
    assert backend.device_count() == 4 and cuda.contexts == {2}  # counting asks for no context either
    with_nvml = fake_devices(monkeypatch, *(h100() for _ in range(4)), nvml=True)
    assert [d.free_memory_bytes for d in backend.devices()] == [40 * GIB, 70 * GIB, 70 * GIB, 70 * GIB]
    assert with_nvml.contexts == {0}


def test_a_device_held_by_another_process_leaves_its_free_memory_unknown(monkeypatch):
    """Under EXCLUSIVE_PROCESS cudaMemGetInfo fails on a device in use elsewhere: the listing still comes back."""
    cuda = fake_devices(monkeypatch, h100())

    def busy(device=None):
        raise RuntimeError("CUDA error: all CUDA-capable devices are busy or unavailable")

    monkeypatch.setattr(torch.cuda, "mem_get_info", busy)
    [device] = available(CudaBackend()).devices()
    assert device.free_memory_bytes is None and device.total_memory_bytes == 80 * GIB and cuda.contexts == set()


def test_an_unavailable_backend_counts_no_devices():
    for backend in (CudaBackend(), RocmDcuBackend()):
        if not backend.availability():
            assert backend.device_count() == 0


def test_driver_version_is_read_from_the_nvidia_kernel_module_line():
    text = (
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n"
        "GCC version:  gcc version 12.2.0"
    )
    assert parse_nvidia_driver_version(text) == "550.54.14"
    open_module = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build"
    assert parse_nvidia_driver_version(open_module) == "570.86.15"
    assert parse_nvidia_driver_version("") == ""


class FakeDriver:
    """libcuda's calls ``primary_context_devices`` makes: ``active`` devices of ``count`` hold a primary context; the
    pointer arguments are filled as the driver API documents."""

    def __init__(self, count: int, active: set[int], failing: str = "") -> None:
        self.count, self.active, self.failing = count, active, failing

    def _result(self, name: str) -> int:
        return 3 if name == self.failing else 0  # CUDA_ERROR_NOT_INITIALIZED

    def cuInit(self, flags):
        return self._result("cuInit")

    def cuDeviceGetCount(self, count):
        count._obj.value = self.count
        return self._result("cuDeviceGetCount")

    def cuDeviceGet(self, device, ordinal):
        device._obj.value = ordinal
        return self._result("cuDeviceGet")

    def cuDevicePrimaryCtxGetState(self, device, flags, active):
        active._obj.value = int(device.value in self.active)
        return self._result("cuDevicePrimaryCtxGetState")


def test_the_devices_holding_a_context_are_read_from_the_driver():
    assert primary_context_devices(FakeDriver(4, {1})) == [1]
    assert primary_context_devices(FakeDriver(2, set())) == []
    assert primary_context_devices(FakeDriver(2, {0}, failing="cuInit")) is None
    assert primary_context_devices(FakeDriver(2, {0}, failing="cuDevicePrimaryCtxGetState")) is None


@pytest.mark.parametrize(("capabilities", "bf16"), [([(9, 0), (8, 0)], True), ([(9, 0), (7, 5)], False)])
def test_cuda_offers_bf16_only_when_every_device_is_ampere_or_newer(monkeypatch, capabilities, bf16):
    cuda = fake_devices(monkeypatch, *(h100(major=major, minor=minor) for major, minor in capabilities))
    assert (torch.bfloat16 in available(CudaBackend()).supported_dtypes()) is bf16
    assert cuda.contexts == set()


def test_no_unavailable_backend_lists_devices_or_bf16():
    for backend in (CudaBackend(), RocmDcuBackend()):
        if not backend.availability():
            assert backend.devices() == [] and torch.bfloat16 not in backend.supported_dtypes()


def imported_modules(folder: Path) -> dict[str, set[str]]:
    """Every module each file under ``folder`` imports, at module level or inside a function."""
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        names = found.setdefault(str(path.relative_to(PACKAGE)), set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
    return found


def reaching(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{file} imports {name}"
        for file, names in imported_modules(folder).items()
        for name in names
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_the_shared_base_imports_neither_backend_and_neither_backend_imports_the_other():
    assert reaching(PACKAGE / "backends/torch_cuda", ("glm_engine.backends.cuda", "glm_engine.backends.rocm_dcu")) == []
    assert reaching(PACKAGE / "backends/cuda", ("glm_engine.backends.rocm_dcu",)) == []
    assert reaching(PACKAGE / "backends/rocm_dcu", ("glm_engine.backends.cuda",)) == []


def test_generation_has_no_device_specific_imports():
    device_code = tuple(f"glm_engine.backends.{name}" for name in ("torch_cuda", "cuda", "rocm_dcu", "ascend"))
    assert reaching(PACKAGE / "generation", (*device_code, "glm_engine.kernels")) == []
