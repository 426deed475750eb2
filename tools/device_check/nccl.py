"""Step 8: a one-rank torchrun launch over NCCL: the process group, its collectives, and the contexts per GPU.

This process launches ``torch.distributed.run --standalone --nproc-per-node 1 -m tools.device_check.nccl_rank``, the
launch ``glm-engine run --tp N`` makes (docs/tensor-parallelism.md). The rank joins the group through
``parallel.communicator.init_from_environment`` (NCCL bound to its device, issue 19 CUDA 9), runs every collective the
model uses, and reports the CUDA contexts it sees: its own, from the driver (``cuda.platform.primary_context_devices``),
and every process of this launch on every GPU (``nvidia-smi --query-compute-apps``, else
``torch.cuda.list_gpu_processes``). One context, the rank's on its own GPU, is right; one on another GPU, or one held
by the launcher, is the defect of issue 19 CUDA 8. After the launch this process asks the driver whether it holds any
context itself. With ``--cpu`` the rank joins a gloo group on the CPU and the context rows are SKIP.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from tools.device_check.common import (
    FAILED,
    PASSED,
    SUMMARY_PREFIX,
    NoDevice,
    arguments,
    gpu_backend_name,
    skipped,
    summary,
)

LAUNCHER_PID = "DEVICE_CHECK_LAUNCHER_PID"  # tells the rank which process launched it (its context is counted too)
RANK_TIMEOUT_S = 35  # the launch as a whole; the step's own limit is a little longer
MAX_STDERR_CHARS = 3000  # of a failed launch's stderr, echoed


def launch_command(cpu: bool, backend: str, python: str = sys.executable) -> list[str]:
    """torchrun, one rank on this node, running ``nccl_rank`` (``--cpu``: over gloo)."""
    rank = ["-m", "tools.device_check.nccl_rank", *(["--cpu"] if cpu else []), "--backend", backend]
    return [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", *rank]


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.split("\n")[0], argv)
    backend = "cpu"
    if not args.cpu:
        try:
            backend = gpu_backend_name(args.backend)
        except NoDevice as exc:
            return skipped(str(exc))
    env = {**os.environ, LAUNCHER_PID: str(os.getpid())}
    try:
        done = subprocess.run(
            launch_command(args.cpu, backend), env=env, capture_output=True, text=True, timeout=RANK_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        print((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or "")
        summary(f"the one-rank launch did not end within {RANK_TIMEOUT_S} s (a collective or NCCL setup hangs)")
        return FAILED
    print(done.stdout, end="")
    if done.returncode != 0:  # torchrun exits 1 for any failed rank: its report and the rank's traceback
        print(done.stderr[-MAX_STDERR_CHARS:], end="")
    if not args.cpu:
        from glm_engine.backends.cuda.platform import primary_context_devices

        held = primary_context_devices()
        print(f"\ncontexts held by the launching process (driver): {'unknown' if held is None else held}")
        if held:
            summary(f"the launching process holds a context on GPU(s) {held}: it must hold none")
            return FAILED
    if done.returncode != 0:
        ranks = [line for line in done.stdout.splitlines() if line.startswith(SUMMARY_PREFIX)]
        detail = ranks[-1][len(SUMMARY_PREFIX) :] if ranks else (done.stderr.strip().splitlines() or ["no output"])[-1]
        summary(f"the launch exited {done.returncode}: {detail}")
        return FAILED
    return PASSED


if __name__ == "__main__":
    sys.exit(main())
