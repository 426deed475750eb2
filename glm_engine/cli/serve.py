"""``glm-engine serve``: an OpenAI-compatible HTTP server for one model (docs/serving.md#the-server)."""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from glm_engine.cli.errors import user_errors
from glm_engine.cli.option_checks import refuse_empty
from glm_engine.cli.progress import progress_bar
from glm_engine.cli.ranks import run_session
from glm_engine.engine import load
from glm_engine.errors import InputError
from glm_engine.parallel.communicator import Communicator
from glm_engine.quant.spec import QuantSpec
from glm_engine.serving.scheduler import SchedulerLimits

API_KEY_ENV = "GLM_ENGINE_API_KEY"


def serve(
    ctx: typer.Context,
    checkpoint: Annotated[
        str, typer.Option(help="a model folder of any family, or a preset such as chatglm3-tiny (random weights)")
    ],
    backend: Annotated[str, typer.Option(help="an op-level backend (cpu, cuda, rocm_dcu, ascend) or auto")] = "auto",
    dtype: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16; default: the backend's first choice")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="the tokenizer file or folder; default: the model's")] = None,
    quant: Annotated[str | None, typer.Option(help="quantize the linears while loading: int8 or int4")] = None,
    quant_scheme: Annotated[str, typer.Option(help="rowwise or groupwise")] = "rowwise",
    quant_group_size: Annotated[int | None, typer.Option(help="columns per scale with groupwise")] = None,
    quant_output: Annotated[bool, typer.Option(help="also quantize lm_head")] = False,
    tp: Annotated[
        int, typer.Option("--tp", help="tensor-parallel degree: ranks to split the model over (torchrun sets them)")
    ] = 1,
    host: Annotated[str, typer.Option(help="address to bind; loopback unless you mean otherwise")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind")] = 8000,
    served_model_name: Annotated[
        str | None, typer.Option(help="the model's name in the API; default: the checkpoint's folder name")
    ] = None,
    kv_cache_memory: Annotated[
        str, typer.Option(help="KV-cache budget: a size (2GiB, 512MiB) or a fraction of the free memory (0.25)")
    ] = "0.25",
    max_num_seqs: Annotated[int, typer.Option(help="sequences in the running batch")] = 16,
    max_batch_tokens: Annotated[int, typer.Option(help="tokens computed per step (decodes and prefill chunks)")] = 256,
    prefill_chunk: Annotated[int, typer.Option(help="tokens of a prompt computed per step")] = 64,
    max_queue: Annotated[int, typer.Option(help="requests that may wait; above it the server answers 429")] = 64,
    api_key: Annotated[
        str | None, typer.Option(help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set)")
    ] = None,
    max_request_bytes: Annotated[int, typer.Option(help="largest request body accepted")] = 1 << 20,
    shutdown_timeout: Annotated[float, typer.Option(help="seconds in-flight requests get after SIGTERM")] = 30.0,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (chat and text completions, streaming, /metrics)."""
    with user_errors():
        refuse_empty({"--checkpoint": checkpoint, "--tokenizer": tokenizer})
        try:
            from glm_engine.server.run import ServeOptions, check_can_listen, follow_rank
            from glm_engine.server.run import serve as run_server
        except ImportError as exc:
            raise InputError(f"serve needs the serve extra ({exc}): pip install 'glm-engine[serve]'") from None
        QuantSpec.requested(quant, quant_scheme, quant_group_size)
        try:
            limits = SchedulerLimits(max_tokens=max_batch_tokens, chunk=prefill_chunk, max_running=max_num_seqs)
        except InputError as exc:
            raise InputError(f"{exc}: check --prefill-chunk, --max-batch-tokens and --max-num-seqs") from None
        options = ServeOptions(
            host=host,
            port=port,
            kv_cache_memory=kv_cache_memory,
            max_queue=max_queue,
            api_key=api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None,
            shutdown_timeout=shutdown_timeout,
            max_request_bytes=max_request_bytes,
            limits=limits,
        )
        if served_model_name is not None and not served_model_name.strip():
            raise InputError("--served-model-name is empty; give the name clients ask for, or leave it out")
        if os.environ.get("RANK", "0") == "0":  # rank 0 listens; the others would find its socket taken
            check_can_listen(host, port)
    load_args = dict(
        backend=backend,
        dtype=dtype,
        tokenizer=tokenizer,
        quant=quant,
        quant_scheme=quant_scheme,
        quant_group_size=quant_group_size,
        quant_output=quant_output,
    )

    def serve_rank(comm: Communicator, degree: int) -> None:
        with progress_bar("loading weights") if comm.is_leader else nullcontext(None) as progress:
            engine = load(checkpoint, progress=progress, tp=degree, communicator=comm, **load_args)
        if not comm.is_leader:
            follow_rank(engine, options, comm)
            return
        for note in engine.notes:
            print(f"[glm-engine] {note}", file=sys.stderr)
        run_server(engine, served_model_name or Path(checkpoint.rstrip("/")).name, options, comm)

    run_session(ctx, "serve", tp, backend, checkpoint, None, serve_rank, drain_on_sigterm=True)
