"""Tensor-parallel sessions for the commands that load a model (``run``, ``chat``): one process, or N ranks.

With ``--tp N`` the command re-runs itself as N ranks (torch's launcher here, or torchrun across nodes): rank 0
reads the input and writes the output, broadcasting each query; every rank runs the same decode on the same gathered
logits, so sampling picks the same tokens everywhere (``docs/tensor-parallelism.md``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from typing import Any, TypeVar

import typer
from torch.distributed.elastic.multiprocessing.errors import record
from typer.core import TyperOption

from glm_engine.backends.registry import REGISTRY
from glm_engine.cli.errors import USER_ERROR_EXIT_CODE, user_errors
from glm_engine.engine.source import open_source
from glm_engine.errors import GlmEngineError, InputError, ParallelError
from glm_engine.parallel.communicator import Communicator, init_from_environment, running_under_torchrun
from glm_engine.parallel.degree import check_device_count, check_tp_degree
from glm_engine.parallel.launch import LAUNCHED_BY_GLM_ENGINE, launch_local

Query = TypeVar("Query")
# serve(comm, tp): load this rank's part of the model and answer every query.
Serve = Callable[[Communicator, int], None]


def command_line(ctx: typer.Context) -> list[str]:
    """The options of this invocation as command-line arguments, for the ranks to run the same command."""
    args: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if not isinstance(param, TyperOption) or value is None:
            continue
        if param.is_flag:
            args.extend(param.opts[:1] if value else param.secondary_opts[:1])
        else:
            args.extend([param.opts[0], str(value.value if isinstance(value, Enum) else value)])
    return args


def shared_queries(comm: Communicator, queries: Iterable[Query] | None) -> Iterator[Query]:
    """Rank 0's queries on every rank: rank 0 reads ``queries`` and broadcasts each one, then the end (None)."""
    if comm.is_leader:
        assert queries is not None
        for query in queries:
            yield comm.broadcast_object(query)
        comm.broadcast_object(None)
        return
    while (query := comm.broadcast_object(None)) is not None:
        yield query


def check_before_launch(backend: str, model: str, config: Any, tp: int) -> None:
    """Refuse a TP degree the model or this node cannot take before any rank starts."""
    chosen, _ = REGISTRY.resolve(backend)
    check_device_count(chosen, tp)
    source = open_source(model, config)  # metadata only
    if source.exported is not None:
        raise ParallelError(f"{source.description} is an exported graph, which has no tensor-parallel form; use --tp 1")
    check_tp_degree(source.config, tp, source.description)


def run_session(
    ctx: typer.Context,
    command: str,
    tp: int,
    backend: str,
    model: str,
    config: Any,
    serve: Serve,
    drain_on_sigterm: bool = False,
) -> None:
    """``serve`` in this process (``tp`` 1), as one rank of a torchrun job, or by launching ``tp`` local ranks
    (``drain_on_sigterm``: SIGTERM ends the ranks normally, as a server's drain does)."""
    if running_under_torchrun():
        _run_as_rank(tp, backend, serve)
        return
    with user_errors():
        if tp < 1:
            raise InputError(f"--tp must be at least 1, got {tp}")
        if tp == 1:
            serve(Communicator(), 1)
            return
        check_before_launch(backend, model, config, tp)
        launch_local(tp, [command, *command_line(ctx)], drain_on_sigterm)


@record
def _serve_rank(tp: int, backend: str, serve: Serve) -> None:
    """One rank of a torchrun job: join the process group, serve, leave. ``@record`` writes any exception into the
    error file torch's launcher reads, so the launching process can name this rank and its message."""
    chosen, _ = REGISTRY.resolve(backend)
    comm = init_from_environment(chosen)
    try:
        if comm.world_size != tp:
            raise ParallelError(
                f"torchrun started {comm.world_size} ranks but --tp is {tp}; pass --tp {comm.world_size} or start "
                f"{tp} ranks (--nnodes x --nproc-per-node)"
            )
        serve(comm, tp)
    finally:
        comm.close()


def _run_as_rank(tp: int, backend: str, serve: Serve) -> None:
    """Serve as one rank; a user error ends this rank with exit code 1, reported once by whoever launched it."""
    try:
        _serve_rank(tp, backend, serve)
    except (GlmEngineError, OSError) as exc:
        if LAUNCHED_BY_GLM_ENGINE not in os.environ:  # under a plain torchrun, say it here
            print(f"error: rank {os.environ.get('RANK', '?')}: {exc}", file=sys.stderr)
        raise typer.Exit(USER_ERROR_EXIT_CODE) from None
