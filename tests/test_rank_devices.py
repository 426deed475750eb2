"""What a tensor-parallel launch touches on a GPU node, checked without one (issue 19, CUDA 8 and 9).

The launcher parent counts devices without a context; each rank creates a context on its own device only, even
after listing the devices (as ``bench`` does); and the process group is bound to the rank's device so NCCL forms its
communicator at once and ``barrier`` never guesses a device. torch.cuda's device queries are the context-counting
double of ``cuda_double.py`` and torch.distributed is a recorder: what is checked is the arguments glm-engine passes,
not what NCCL does with them (``tools/device_check.sh``'s NCCL step runs the real thing on a GPU).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from cuda_double import ContextCountingCuda, h100

from glm_engine.backends.ascend import AscendBackend
from glm_engine.backends.base import Verdict
from glm_engine.backends.cpu import CpuBackend
from glm_engine.backends.cuda import CudaBackend
from glm_engine.errors import ParallelError
from glm_engine.parallel import communicator
from glm_engine.parallel.communicator import barrier_device, init_from_environment, process_group_device
from glm_engine.parallel.degree import check_device_count


class RecordingDist:
    """The torch.distributed calls ``init_from_environment`` and the communicator make, recorded."""

    def __init__(self, initialized: bool = False) -> None:
        self.initialized = initialized
        self.init_kwargs: dict[str, Any] = {}
        self.barrier_kwargs: list[dict[str, Any]] = []

    def is_initialized(self) -> bool:
        return self.initialized

    def init_process_group(self, **kwargs: Any) -> None:
        self.init_kwargs = kwargs
        self.initialized = True

    def get_rank(self) -> int:
        return int(self.init_kwargs.get("rank", 0))

    def get_world_size(self) -> int:
        return int(self.init_kwargs.get("world_size", 1))

    def new_group(self, **kwargs: Any) -> object:
        return object()

    def barrier(self, **kwargs: Any) -> None:
        self.barrier_kwargs.append(kwargs)


def cuda_node(monkeypatch, gpus: int = 4) -> tuple[ContextCountingCuda, CudaBackend]:
    cuda = ContextCountingCuda([h100() for _ in range(gpus)]).install(monkeypatch)
    backend = CudaBackend()
    backend.availability = lambda: Verdict(True, "stood in")
    return cuda, backend


def as_rank(monkeypatch, rank: int, world_size: int, local_rank: int) -> RecordingDist:
    env = dict(RANK=rank, WORLD_SIZE=world_size, LOCAL_RANK=local_rank, MASTER_ADDR="localhost", MASTER_PORT=29500)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    recorder = RecordingDist()
    monkeypatch.setattr(communicator, "dist", recorder)
    return recorder


def test_the_launcher_checks_the_device_count_without_a_context_on_any_gpu(monkeypatch):
    cuda, backend = cuda_node(monkeypatch)
    check_device_count(backend, 4)
    with pytest.raises(ParallelError, match="this node has 4"):
        check_device_count(backend, 5)
    assert cuda.contexts == set()


def test_a_rank_creates_a_context_on_its_own_gpu_only(monkeypatch):
    cuda, backend = cuda_node(monkeypatch)
    as_rank(monkeypatch, rank=5, world_size=8, local_rank=1)
    init_from_environment(backend)
    backend.devices()  # what bench asks after loading, on every rank
    assert cuda.current == 1 and cuda.contexts == {1}


def test_an_nccl_group_is_bound_to_the_ranks_gpu_and_its_barrier_names_it(monkeypatch):
    """Rank 5 of two nodes sits on GPU 1: the binding and the barrier follow LOCAL_RANK, not the global rank."""
    _, backend = cuda_node(monkeypatch)
    recorder = as_rank(monkeypatch, rank=5, world_size=8, local_rank=1)
    comm = init_from_environment(backend)
    assert recorder.init_kwargs["backend"] == "nccl" and recorder.init_kwargs["rank"] == 5
    assert recorder.init_kwargs["device_id"] == torch.device("cuda", 1)
    comm.barrier()
    assert recorder.barrier_kwargs == [{"device_ids": [1]}]


def test_a_group_the_caller_made_is_used_as_it_is_and_its_barrier_still_names_the_gpu(monkeypatch):
    _, backend = cuda_node(monkeypatch)
    recorder = as_rank(monkeypatch, rank=1, world_size=2, local_rank=1)
    recorder.initialized = True
    comm = init_from_environment(backend)
    comm.barrier()
    assert recorder.init_kwargs == {} and recorder.barrier_kwargs == [{"device_ids": [1]}]


def test_a_gloo_group_on_the_cpu_binds_no_device_and_its_barrier_names_none(monkeypatch):
    recorder = as_rank(monkeypatch, rank=1, world_size=2, local_rank=1)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # leaves this process's thread count alone
    comm = init_from_environment(CpuBackend())
    comm.barrier()
    assert recorder.init_kwargs["backend"] == "gloo" and recorder.init_kwargs["device_id"] is None
    assert recorder.barrier_kwargs == [{}]


def test_an_hccl_group_is_not_bound_but_its_barrier_names_the_npu():
    """A bound npu device would pass to the gloo control group, which torch has no npu backend for."""
    ascend = AscendBackend(npu=object())  # only the class's device type and process-group backend are read
    assert process_group_device(ascend, 3) is None and barrier_device(ascend, 3) == 3
    assert process_group_device(CudaBackend(), 3) == torch.device("cuda", 3) and barrier_device(CudaBackend(), 3) == 3
    assert process_group_device(CpuBackend(), 3) is None and barrier_device(CpuBackend(), 3) is None
