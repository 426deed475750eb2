"""The rank of the device check's NCCL step (``nccl.py`` launches it under torchrun; not meant to be run alone).

It joins the process group as a tensor-parallel rank does (``init_from_environment``), runs all_reduce, all_gather,
broadcast and barrier on its device and checks their results, then reports the CUDA contexts of this launch per GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

import torch

from tools.device_check.common import FAILED, PASSED, LiveTable, arguments, summary

LAUNCHER_PID = "DEVICE_CHECK_LAUNCHER_PID"  # set by nccl.py
SMI_TIMEOUT_S = 10


def collectives(comm, device: torch.device, barrier_on: int | None) -> list[list[object]]:
    """Each collective the model uses, on ``device``, with what it should give for this world size; ``barrier_on``
    is the device the communicator's barrier names (``parallel.communicator.barrier_device``)."""
    world, rank = comm.world_size, comm.rank
    rows = []
    reduced = comm.all_reduce(torch.full((8,), float(rank + 1), device=device))
    want = world * (world + 1) / 2
    rows.append(["all_reduce", f"{float(reduced[0]):g} (want {want:g})", bool((reduced == want).all())])
    gathered = comm.all_gather(torch.full((2,), float(rank), device=device)).cpu()
    want_gather = torch.arange(world).repeat_interleave(2).float()
    rows.append(["all_gather", str(gathered.tolist()), bool(torch.equal(gathered, want_gather))])
    sent = comm.broadcast(torch.full((4,), 7.0 if rank == 0 else -1.0, device=device))
    rows.append(["broadcast", f"{float(sent[0]):g} (want 7)", bool((sent == 7.0).all())])
    obj = comm.broadcast_object({"from": rank})
    rows.append(["broadcast_object (gloo control group)", str(obj), obj == {"from": 0}])
    comm.barrier()
    rows.append(["barrier", f"returned (device_ids={barrier_on})", True])
    return rows


def smi_processes() -> dict[int, list[tuple[int, str]]] | None:
    """{GPU index: [(pid, used memory)]} from nvidia-smi; None where it is missing or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        gpus = _smi([smi, "--query-gpu=index,uuid", "--format=csv,noheader"])
        apps = _smi([smi, "--query-compute-apps=gpu_uuid,pid,used_memory", "--format=csv,noheader"])
    except (OSError, subprocess.SubprocessError):
        return None
    index_of = {uuid: int(index) for index, uuid in gpus}
    found: dict[int, list[tuple[int, str]]] = {index: [] for index in index_of.values()}
    for uuid, pid, memory in apps:
        if uuid in index_of and pid.isdigit():
            found[index_of[uuid]].append((int(pid), memory))
    return found


def _smi(command: list[str]) -> list[list[str]]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=True)
    return [[part.strip() for part in line.split(",")] for line in done.stdout.splitlines() if line.strip()]


def context_rows(local_rank: int) -> list[list[object]]:
    """This rank's contexts (driver) and this launch's processes per GPU (nvidia-smi): one, on ``local_rank``."""
    from glm_engine.backends.cuda.platform import primary_context_devices

    rows: list[list[object]] = []
    own = primary_context_devices()
    rows.append(["contexts of this rank (driver)", "unknown" if own is None else str(own), own in (None, [local_rank])])
    ours = {os.getpid(), os.getppid(), int(os.environ.get(LAUNCHER_PID, "0") or 0)}
    processes = smi_processes()
    if processes is None:
        listing = torch.cuda.list_gpu_processes(local_rank).replace("\n", "; ")
        rows.append(["processes on this rank's GPU (torch.cuda.list_gpu_processes)", listing, True])
        return rows
    if not any(processes.values()):
        rows.append(["contexts per GPU (nvidia-smi)", "no process visible (PID namespace?)", True])
        return rows
    for index, entries in sorted(processes.items()):
        mine = [f"pid {pid} {memory}" for pid, memory in entries if pid in ours]
        others = len(entries) - len(mine)
        want = 1 if index == local_rank else 0
        text = f"{len(mine)} of this launch (want {want})" + (f": {', '.join(mine)}" if mine else "")
        rows.append(
            [f"GPU {index} contexts (nvidia-smi)", text + (f"; {others} other" if others else ""), len(mine) == want]
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    from glm_engine.backends.registry import get_backend
    from glm_engine.parallel.communicator import barrier_device, init_from_environment

    args = arguments(__doc__.split("\n")[0], argv)
    backend = get_backend("cpu" if args.cpu else args.backend)
    comm = init_from_environment(backend)
    device = torch.device("cpu") if args.cpu else backend.device(comm.local_rank)
    live = LiveTable(["check", "result", "ok"])
    rows = [["process group", f"{backend.dist_backend}, rank {comm.rank} of {comm.world_size} on {device}", True]]
    rows += collectives(comm, device, barrier_device(backend, comm.local_rank))
    if device.type == "cuda":
        rows += context_rows(comm.local_rank)
    else:
        rows.append(["contexts per GPU", "SKIP: no GPU in this launch (gloo on the CPU)", True])
    comm.close()
    for check, result, ok in rows:
        live.add([check, result, "ok" if ok else "FAIL"])
    bad = [str(check) for check, _, ok in rows if not ok]
    summary(
        f"{backend.dist_backend}, {len(live.rows)} checks, {len(bad)} failing" + (": " + ", ".join(bad) if bad else "")
    )
    return FAILED if bad else PASSED


if __name__ == "__main__":
    sys.exit(main())
