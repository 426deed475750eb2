"""``glm-engine run``: fill blanks interactively or for every line of a file, as the reference's generate.py does.

With ``--tp N`` the same command runs as N ranks (started here with torch's launcher, or by torchrun across nodes):
rank 0 reads the queries, prints and writes the answers, and broadcasts each query and the session's options and
seed; every rank runs the same decode loop on the same gathered logits, so sampling picks the same tokens everywhere.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import fields
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated

import torch
import typer

from glm_engine.checkpoint.atomic import write_atomically
from glm_engine.cli.errors import user_errors
from glm_engine.cli.model_kind import require_blank_infilling
from glm_engine.cli.option_checks import refuse_empty
from glm_engine.cli.output_paths import check_output_folder
from glm_engine.cli.progress import progress_bar
from glm_engine.cli.ranks import run_session, shared_queries
from glm_engine.cli.render import styled_answer, wants_colour
from glm_engine.cli.typed_lines import typed_lines
from glm_engine.engine import DEFAULT_MODEL, load
from glm_engine.errors import GlmEngineError, InputError
from glm_engine.exported import refuse_exported_folder
from glm_engine.generation.blank_filling import Completion
from glm_engine.generation.options import GenerationOptions
from glm_engine.parallel.communicator import Communicator
from glm_engine.quant.spec import QuantSpec

INTERACTIVE = "interactive"
PROMPT = "\nPlease Input Query (stop to exit) >>> "
_DEFAULTS = GenerationOptions()
UNSAFE_IN_NAMES = frozenset('/\\<>:"|?*')  # separators, and what Windows file systems refuse
MAX_NAME_BYTES = 255  # a file name's limit on the common file systems
# An answer is written through a hidden ".<name>.tmp-<pid>" beside it (checkpoint/atomic.py), so the answer's own
# name must leave room for that prefix and suffix, with a pid of up to 7 digits (Linux's pid_max is 2**22).
ATOMIC_NAME_EXTRA = len(".") + len(".tmp-") + 7
MAX_ANSWER_NAME_BYTES = MAX_NAME_BYTES - ATOMIC_NAME_EXTRA
GENERATION_OPTIONS = tuple(f.name for f in fields(GenerationOptions))


class StrategyName(str, Enum):
    BaseStrategy = "BaseStrategy"
    BeamSearchStrategy = "BeamSearchStrategy"


def interactive_queries() -> Iterator[tuple[str | None, str]]:
    """Queries typed at the prompt until ``stop`` or end of input; empty input is refused."""
    for text in typed_lines(PROMPT):
        if text == "stop":
            return
        if not text:
            print("Query should not be empty!")
            continue
        yield None, text


def read_queries(path: Path, with_id: bool) -> list[tuple[str | None, str]]:
    """Non-empty stripped lines of ``path``; with ``with_id`` each line is ``id<TAB>text``. All checked up front."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text: {exc}") from None
    queries: list[tuple[str | None, str]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        if not with_id:
            queries.append((None, line))
            continue
        query_id, tab, text = line.partition("\t")
        if not tab:
            raise InputError(f"{path}:{number}: --with-id needs 'id<TAB>text' lines")
        if query_id in ("", ".", "..") or any(c in UNSAFE_IN_NAMES or not c.isprintable() for c in query_id):
            raise InputError(
                f"{path}:{number}: id {query_id!r} cannot name an answer file (no '.', '..', control characters "
                'or any of / \\ < > : " | ? *)'
            )
        if len(f"{query_id}.txt".encode()) > MAX_ANSWER_NAME_BYTES:
            raise InputError(
                f"{path}:{number}: id {query_id[:40]!r}... is too long for a file name (at most "
                f"{MAX_ANSWER_NAME_BYTES - len('.txt')} UTF-8 bytes); shorten it"
            )
        if query_id in seen:
            raise InputError(f"{path}:{number}: id {query_id!r} repeats line {seen[query_id]}; ids must be unique")
        seen[query_id] = number
        queries.append((query_id, text))
    if not queries:
        raise InputError(f"--input-source {path} has no queries (it is empty or holds only blank lines)")
    return queries


def output_file(output_path: Path, query_id: str | None, text: str) -> Path:
    """``<id>.txt`` with an id, else the first 20 characters of the text that can name a file on any system
    (no separators, control characters or ``<>:"|?*``) and a timestamp, never an existing file's name."""
    if query_id is not None:
        return output_path / f"{query_id}.txt"
    safe = "".join(c for c in text if c.isprintable() and c not in UNSAFE_IN_NAMES)[:20].strip(" .") or "query"
    stem = f"{safe}-{datetime.now().strftime('%m-%d-%H-%M-%S')}"
    path, n = output_path / f"{stem}.txt", 1
    while path.exists():  # two queries within a second must not overwrite each other
        path, n = output_path / f"{stem}-{n}.txt", n + 1
    return path


def report(completion: Completion, tokenizer: object, print_all_beams: bool) -> None:
    print(f"\nInput: {completion.prompt}\n")
    colour = wants_colour(sys.stdout)
    if print_all_beams and len(completion.answers) > 1:
        for beam in range(len(completion.answers)):
            print(f"Output beam {beam}:", styled_answer(completion, beam, tokenizer, colour))
    else:
        print("Output:", styled_answer(completion, 0, tokenizer, colour))


def save(completion: Completion, path: Path) -> None:
    text = "".join(answer + "\n" for answer in completion.answers)
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def serve(
    comm: Communicator,
    tp: int,
    options: dict,
    load_args: dict,
    input_source: str,
    output_path: Path,
    with_id: bool,
    print_all_beams: bool,
) -> None:
    """Load the model (this rank's part) and answer every query; only rank 0 touches the console and files."""
    queries: Iterable[tuple[str | None, str]] | None = None
    if comm.is_leader:
        try:
            queries = _open_queries(input_source, output_path, with_id)
        except (GlmEngineError, OSError):
            comm.broadcast_object(None)  # the other ranks stop quietly; this rank reports the error
            raise
    options = comm.broadcast_object(options)  # rank 0's options and seed hold for every rank
    if options is None:
        return
    interactive = input_source == INTERACTIVE
    with progress_bar("loading weights") if comm.is_leader else nullcontext(None) as progress:
        engine = load(**load_args, progress=progress, tp=tp, communicator=comm)
    if comm.is_leader:
        for note in engine.notes:
            print(f"[glm-engine] {note}", file=sys.stderr)
    generator = torch.Generator().manual_seed(options["seed"])  # one random stream per session, as the reference
    failed = answered = 0
    for query_id, text in shared_queries(comm, queries):
        started = time.perf_counter()
        try:
            completion = engine.generate(text, generator=generator, **options)[0]
        except InputError as exc:  # every rank refuses the same query the same way, and goes on to the next
            failed += 1
            if comm.is_leader:
                print(f"error: {'query ' + repr(query_id) + ': ' if query_id else ''}{exc}", file=sys.stderr)
            continue
        answered += 1
        if comm.is_leader:
            report(completion, engine.tokenizer, print_all_beams)
            output_path.mkdir(parents=True, exist_ok=True)  # only now: a run that fails earlier leaves no folder
            save(completion, output_file(output_path, query_id, text))
            print(f"Taken time {time.perf_counter() - started:.2f}", file=sys.stderr)
    if failed and not interactive:
        raise InputError(f"{failed} of {failed + answered} queries were refused (said above); the others are answered")


def _open_queries(input_source: str, output_path: Path, with_id: bool) -> Iterable[tuple[str | None, str]]:
    """The queries (a file is read and checked whole, up front); the paths are checked before any loading."""
    if input_source != INTERACTIVE and not Path(input_source).is_file():
        raise InputError(f"--input-source {input_source!r} is neither 'interactive' nor an existing file")
    check_output_folder(output_path, "--output-path")  # fail now, not after minutes of loading
    return interactive_queries() if input_source == INTERACTIVE else read_queries(Path(input_source), with_id)


GRAPH_BACKENDS = ("onnxruntime", "tensorrt")


def check_backend_fits(checkpoint: str | None, backend: str, ort_provider: str | None) -> None:
    """Say which backend an exported folder needs, and refuse --ort-provider without onnxruntime, before loading."""
    if ort_provider and backend != "onnxruntime":
        raise InputError(
            f"--ort-provider picks ONNX Runtime's execution provider: it goes with --backend onnxruntime, not "
            f"--backend {backend}"
        )
    if backend not in GRAPH_BACKENDS:
        refuse_exported_folder(checkpoint)


def run(
    ctx: typer.Context,
    backend: Annotated[str, typer.Option(help="backend name, or auto for the best available")] = "auto",
    checkpoint: Annotated[
        str | None, typer.Option(help="GLM-130B folder (SAT, native), export or preset; default: the demo model")
    ] = None,
    config: Annotated[
        str | None, typer.Option(help="preset name or config.json, for a SAT folder without config.json")
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(help="ice_text.model file or its folder; default: the checkpoint's own, else ~/.icetk_models/"),
    ] = None,
    dtype: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16; default: the backend's first choice")] = None,
    input_source: Annotated[str, typer.Option(help="'interactive' or a file with one query per line")] = INTERACTIVE,
    output_path: Annotated[Path, typer.Option(help="folder for one answer file per query")] = Path("samples"),
    with_id: Annotated[bool, typer.Option(help="input lines are 'id<TAB>text'; answers go to <id>.txt")] = False,
    out_seq_length: Annotated[int, typer.Option(help="maximum tokens, prompt included")] = _DEFAULTS.out_seq_length,
    min_gen_length: Annotated[
        int, typer.Option(help="minimum tokens per blank (beam search)")
    ] = _DEFAULTS.min_gen_length,
    sampling_strategy: Annotated[StrategyName, typer.Option()] = StrategyName.BaseStrategy,
    num_beams: Annotated[int, typer.Option()] = _DEFAULTS.num_beams,
    length_penalty: Annotated[float, typer.Option()] = _DEFAULTS.length_penalty,
    no_repeat_ngram_size: Annotated[int, typer.Option()] = _DEFAULTS.no_repeat_ngram_size,
    deterministic: Annotated[
        bool, typer.Option(help="beam search takes the top candidates instead of sampling them")
    ] = False,
    print_all_beams: Annotated[bool, typer.Option()] = False,
    top_k: Annotated[int, typer.Option("--top-k", "--top_k", help="0 = off")] = _DEFAULTS.top_k,
    top_p: Annotated[float, typer.Option("--top-p", "--top_p", help="0 = off")] = _DEFAULTS.top_p,
    temperature: Annotated[float, typer.Option()] = _DEFAULTS.temperature,
    seed: Annotated[int, typer.Option()] = _DEFAULTS.seed,
    tp: Annotated[
        int, typer.Option("--tp", help="tensor-parallel degree: ranks to split the model over (torchrun sets them)")
    ] = 1,
    quant: Annotated[
        str | None, typer.Option(help="quantize the linears while loading: int8 or int4 (weight-only)")
    ] = None,
    quant_scheme: Annotated[
        str, typer.Option(help="rowwise (the reference's per-row scales) or groupwise (a scale per block)")
    ] = "rowwise",
    quant_group_size: Annotated[
        int | None, typer.Option(help="input columns per scale with groupwise: 32, 64 or 128 (default 128)")
    ] = None,
    quant_output: Annotated[
        bool, typer.Option(help="also quantize the output projection (a copy of the tied embedding) for the logits")
    ] = False,
    ort_provider: Annotated[
        str | None,
        typer.Option(
            help="with --backend onnxruntime: cpu, cuda, tensorrt, migraphx, rocm, cann (default: best found)"
        ),
    ] = None,
) -> None:
    """Fill [MASK]/[sMASK] blanks or continue text ([gMASK]) for each query, printing and saving the answers."""
    options = {name: ctx.params[name] for name in GENERATION_OPTIONS}  # the flags named as GenerationOptions' fields
    options["sampling_strategy"] = sampling_strategy.value
    load_args = dict(
        path_or_preset=checkpoint or DEFAULT_MODEL,
        backend=backend,
        dtype=dtype,
        tokenizer=tokenizer,
        config=config,
        quant=quant,
        quant_scheme=quant_scheme,
        quant_group_size=quant_group_size,
        quant_output=quant_output,
        backend_options={"provider": ort_provider} if ort_provider else None,
    )
    with user_errors():
        refuse_empty({"--checkpoint": checkpoint, "--config": config, "--tokenizer": tokenizer})
        generation = GenerationOptions.from_kwargs(**options)  # reject bad options before loading anything
        QuantSpec.requested(quant, quant_scheme, quant_group_size)
        check_backend_fits(checkpoint, backend, ort_provider)
        model = require_blank_infilling(checkpoint or DEFAULT_MODEL, config, backend, "run").config
        generation.check_fits(model.max_sequence_length, model.vocab_size, len(model.vocab_layout.end_tokens))

    def serve_rank(comm: Communicator, degree: int) -> None:
        serve(comm, degree, options, load_args, input_source, output_path, with_id, print_all_beams)

    run_session(ctx, "run", tp, backend, checkpoint or DEFAULT_MODEL, config, serve_rank)
