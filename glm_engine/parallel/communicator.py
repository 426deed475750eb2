"""The communicator: the collectives tensor parallelism needs, over ``torch.distributed``.

:class:`Communicator` is the single-process case, where every collective is the identity, so the model is written
once and has no ``if tp > 1`` branches. :class:`TorchDistributedCommunicator` runs the same calls over a process
group whose backend the device backend names (``Backend.dist_backend``: gloo, nccl, hccl), the way the reference's
``mpu`` does (docs/glm-semantics.md#tensor-parallel-mechanics). :func:`init_from_environment` joins the group torchrun
describes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from glm_engine.backends.base import Backend
from glm_engine.errors import CollectiveError, ParallelError

# How long a collective of the model may wait for the other ranks before failing instead of hanging forever (a rank
# that died or a broken interconnect; docs/tensor-parallelism.md#process-groups-and-timeouts). Loading a shard may take
# minutes.
DEFAULT_TIMEOUT = timedelta(minutes=30)
# How long ranks wait for rank 0's next message (a query typed at an interactive prompt): a gloo group of its own.
CONTROL_TIMEOUT = timedelta(days=7)
# How much of a backend's error message a CollectiveError quotes.
MAX_DETAIL_CHARS = 160
# The variables torchrun (and torch's elastic launcher) sets for every worker.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Process-group backends whose ``barrier`` takes ``device_ids`` (torch.distributed.barrier: NCCL; torch_npu's HCCL
# likewise); gloo's refuses them in older torch releases.
DEVICE_BARRIER_BACKENDS = ("nccl", "hccl")

T = TypeVar("T")


class Communicator:
    """One process holds the whole model: every collective returns its input unchanged."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the device index of this rank on its node

    @property
    def is_leader(self) -> bool:
        """Rank 0 owns the console and file I/O and broadcasts inputs to the others."""
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks, in place; returns it."""
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``tensor`` along the last dim in rank order (vocab-parallel logits)."""
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Overwrite ``tensor`` with rank ``src``'s, in place; returns it."""
        return tensor

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """Rank ``src``'s picklable ``obj`` (a prompt, options) on every rank; the others' ``obj`` is ignored."""
        return obj

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def close(self) -> None:
        """Leave the process group (nothing to do in one process)."""


class TorchDistributedCommunicator(Communicator):
    """The collectives over the default ``torch.distributed`` process group (initialised by the caller)."""

    def __init__(self, local_rank: int = 0, owns_group: bool = False, barrier_device: int | None = None) -> None:
        """``barrier_device``: the device index ``barrier`` runs on (see :func:`barrier_device`); None lets torch
        choose, which is right for gloo and for a group bound to its device at ``init_process_group``."""
        if not dist.is_initialized():
            raise ParallelError("torch.distributed is not initialised; use init_from_environment() under torchrun")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = local_rank
        self._owns_group = owns_group
        self._barrier_device = barrier_device
        # Python objects travel on a CPU (gloo) group with a long timeout: an idle prompt is not a failure, and
        # pickled objects never need a device copy.
        self._control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        with self._collective("all_reduce"):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        with self._collective("all_gather"):
            dist.all_gather(parts, tensor)
        return torch.cat(parts, dim=-1)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        with self._collective("broadcast"):
            dist.broadcast(tensor, src=src)
        return tensor

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        holder = [obj if self.rank == src else None]
        with self._collective("broadcast_object"):
            dist.broadcast_object_list(holder, src=src, group=self._control)
        return holder[0]  # type: ignore[return-value]

    def barrier(self) -> None:
        with self._collective("barrier"):
            if self._barrier_device is None:
                dist.barrier()
            else:  # named, so NCCL/HCCL never guesses the device from the rank (torch.distributed.barrier's note)
                dist.barrier(device_ids=[self._barrier_device])

    @contextmanager
    def _collective(self, name: str) -> Iterator[None]:
        """Turn a failed collective into a CollectiveError, so a launcher can tell it from the failure behind it."""
        try:
            yield
        except RuntimeError as exc:  # torch.distributed's errors (DistError and the backends' own) are RuntimeErrors
            detail = str(exc).strip().splitlines()[0][:MAX_DETAIL_CHARS] if str(exc).strip() else type(exc).__name__
            raise CollectiveError(
                f"{name} failed on rank {self.rank}, most likely because another rank stopped ({detail})"
            ) from exc

    def close(self) -> None:
        """Destroy the process group if this communicator created it (a caller's own group is left alone)."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()


@dataclass(frozen=True)
class LaunchEnvironment:
    """Where this process sits in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def running_under_torchrun() -> bool:
    """Whether torchrun (or torch's elastic launcher) started this process as one rank of a job."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def launch_environment() -> LaunchEnvironment:
    """This rank's coordinates from torchrun's variables, or a ParallelError saying how to start ranks."""
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ParallelError(
            f"tensor parallelism needs one process per rank, started by torchrun or `glm-engine run --tp N`; "
            f"{', '.join(missing)} not set"
        )
    try:
        world_size = int(os.environ["WORLD_SIZE"])
        return LaunchEnvironment(
            rank=int(os.environ["RANK"]),
            world_size=world_size,
            local_rank=int(os.environ["LOCAL_RANK"]),
            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world_size)),
        )
    except ValueError as exc:
        raise ParallelError(f"torchrun's RANK/WORLD_SIZE/LOCAL_RANK must be integers: {exc}") from None


def process_group_device(backend: Backend, local_rank: int) -> torch.device | None:
    """The device ``init_process_group(device_id=...)`` binds the default group to: the rank's GPU under NCCL.

    torch.distributed's documentation of ``device_id``: under NCCL the communicator is formed at once (an NCCL
    setup error surfaces in ``init_process_group``, not at the first collective), and ``barrier`` runs on that device
    instead of guessing one from the global rank, which is wrong when ranks and devices do not line up. Elsewhere
    None: torch refuses a CPU ``device_id`` (gloo); and under HCCL, ``new_group`` gives every later group the default
    group's bound device, including the communicator's gloo control group, while torch registers gloo for the cpu
    and cuda device types only (``Backend.backend_capability``), so an ``npu`` binding would leave that group
    without a backend. HCCL ranks name their device to ``barrier`` instead (:func:`barrier_device`).
    """
    if backend.dist_backend != "nccl":
        return None
    return torch.device(backend.device_type, local_rank)


def barrier_device(backend: Backend, local_rank: int) -> int | None:
    """The device index a rank's ``barrier`` names: LOCAL_RANK under NCCL/HCCL, None under gloo (the CPU)."""
    return local_rank if backend.dist_backend in DEVICE_BARRIER_BACKENDS else None


def init_from_environment(backend: Backend, timeout: timedelta = DEFAULT_TIMEOUT) -> TorchDistributedCommunicator:
    """Join the process group torchrun describes, with ``backend``'s process-group backend, on device LOCAL_RANK.

    Checks LOCAL_RANK against the devices this node has before touching any, so a job with more ranks per node than
    devices fails with a message instead of two ranks sharing (or hanging on) one device. Devices are counted with
    ``backend.device_count()``, which creates no context: the only device a rank touches is its own, made current
    before anything else runs on it (a context on every GPU from every rank would cost each GPU one context per
    rank, and fail under the EXCLUSIVE_PROCESS compute mode).
    """
    env = launch_environment()
    if backend.device_type == "cpu":
        if "OMP_NUM_THREADS" not in os.environ:  # ranks of one node share its cores instead of oversubscribing them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world_size))
    else:
        available = backend.device_count()
        if env.local_rank >= available:
            raise ParallelError(
                f"rank {env.rank} has LOCAL_RANK {env.local_rank}, but this node has {available} {backend.name} "
                f"device(s): start at most {available} ranks per node (--nproc-per-node / --tp)"
            )
        torch.get_device_module(backend.device_type).set_device(env.local_rank)
    barrier_on = barrier_device(backend, env.local_rank)
    if dist.is_initialized():  # the caller set up the group: use it as it is
        return TorchDistributedCommunicator(env.local_rank, barrier_device=barrier_on)
    dist.init_process_group(
        backend=backend.dist_backend,
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        timeout=timeout,
        device_id=process_group_device(backend, env.local_rank),
    )
    return TorchDistributedCommunicator(env.local_rank, owns_group=True, barrier_device=barrier_on)
