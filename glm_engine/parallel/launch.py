"""Start the ranks of a single-node tensor-parallel run with torch's own launcher, and report a failed rank.

``glm-engine run --tp N`` re-runs its own command in N worker processes through ``torch.distributed``'s elastic
launcher, exactly what ``torchrun --standalone --nproc-per-node N -m glm_engine.cli ...`` does, so single-node and
multi-node runs share one worker path. The launcher stops every rank when one fails; instead of its
``ChildFailedError`` table this module names the rank that caused the failure and its message
(docs/tensor-parallelism.md#errors). Workers record their exception with torch's ``@record`` (an error file per rank).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Sequence

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from glm_engine.errors import GlmEngineError, ParallelError

# Set in the workers' environment so they leave the report of a failure to the launching process.
LAUNCHED_BY_GLM_ENGINE = "GLM_ENGINE_TP_LAUNCHER"
# Seconds between the launcher's checks on its workers: how soon a failed rank brings the others down.
MONITOR_INTERVAL_S = 0.1
# Exception types a rank raises when another rank went away in the middle of a collective: consequences, not causes.
_CONSEQUENCES = ("CollectiveError", "DistBackendError", "DistNetworkError", "DistStoreError", "DistError")


def launch_local(nproc: int, args: Sequence[str], drain_on_sigterm: bool = False) -> None:
    """Run ``python -m glm_engine.cli *args`` as ``nproc`` ranks on this node; ParallelError if any rank fails.

    On SIGTERM or SIGINT torch's launcher passes the signal to the ranks and waits for them (up to its 30 s); with
    ``drain_on_sigterm`` (a server, whose rank 0 drains and exits 0) SIGTERM is a normal end. Otherwise the signal
    is raised again here once this process's own handlers are back (torch's agent leaves its handlers installed),
    so the launching process ends as it would have without ranks: ``glm-engine`` exits 143 or 130, a caller's
    handler runs, or the default action applies."""
    saved = _signal_handlers()
    try:
        _launch(config_for(nproc), args, drain_on_sigterm)
    except SignalException as exc:
        _restore(saved)
        signal.raise_signal(exc.sigval)
    finally:
        _restore(saved)


def config_for(nproc: int) -> LaunchConfig:
    """One node, ``nproc`` ranks, a free rendezvous port, no restarts, a fast failure monitor."""
    return LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"glm-engine-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone
        max_restarts=0,
        monitor_interval=MONITOR_INTERVAL_S,
    )


def _launch(config: LaunchConfig, args: Sequence[str], drain_on_sigterm: bool) -> None:
    elastic_logger = logging.getLogger("torch.distributed.elastic")
    level = elastic_logger.level
    elastic_logger.setLevel(logging.CRITICAL)  # its failure report is replaced by the one-line message below
    previous = os.environ.get(LAUNCHED_BY_GLM_ENGINE)
    os.environ[LAUNCHED_BY_GLM_ENGINE] = "1"
    try:
        with tempfile.TemporaryDirectory(prefix="glm-engine-tp-") as logs:  # the ranks' error files live here
            config.logs_specs = DefaultLogsSpecs(log_dir=logs)
            try:
                elastic_launch(config, sys.executable)("-m", "glm_engine.cli", *args)
            except ChildFailedError as exc:
                raise ParallelError(failure_summary(exc)) from None
            except SignalException as exc:
                if not (drain_on_sigterm and exc.sigval == signal.SIGTERM):
                    raise
    finally:
        elastic_logger.setLevel(level)
        if previous is None:
            os.environ.pop(LAUNCHED_BY_GLM_ENGINE, None)
        else:
            os.environ[LAUNCHED_BY_GLM_ENGINE] = previous


def _signal_handlers() -> dict[int, object]:
    names = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
    return {sig: signal.getsignal(sig) for name in names if (sig := getattr(signal, name, None)) is not None}


def _restore(handlers: dict[int, object]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def failure_summary(exc: ChildFailedError) -> str:
    """``rank R: <its message>`` for the rank whose failure caused the others'.

    Ranks stopped by the launcher (a signal, no error file) or failing in a collective because a peer died are
    consequences; among the rest the earliest failure wins, then the lowest rank.
    """
    ranked = sorted(exc.failures.items(), key=lambda item: (_is_consequence(item[1]), item[1].timestamp, item[0]))
    rank, failure = ranked[0]
    message = _message(failure)
    if not message:
        return f"rank {rank} exited with code {failure.exitcode} without an error message (see its output above)"
    kind, _, text = message.partition(": ")
    if kind in _user_error_names():
        return f"rank {rank}: {text}"
    return f"rank {rank} failed: {message} (its traceback is above)"


def _message(failure: ProcessFailure) -> str:
    """The exception a rank recorded (``Type: message``), or '' when it recorded none."""
    if not os.path.isfile(failure.error_file):  # stopped by a signal, or died before recording anything
        return ""
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    return str(message).strip()


def _is_consequence(failure: ProcessFailure) -> bool:
    message = _message(failure)
    return not message or message.partition(":")[0] in _CONSEQUENCES


def _user_error_names() -> set[str]:
    """Class names of the errors a user can fix (ours and the operating system's: paths, permissions, disk): their
    messages are shown without the type, as the CLI does."""
    names, pending = set(), [GlmEngineError, OSError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return names
