"""``glm-engine chat``: multi-round chat with a chat model (ChatGLM-6B, ChatGLM2/3, GLM-4), as the releases'
``cli_demo.py``.

Reads one query per line from the terminal or from piped standard input until ``stop`` or end of input; ``clear``
forgets the conversation. Each reply is streamed as it is generated; a tool call is printed as one. ``--system`` opens
the conversation with a system message (the releases that have one). With ``--history-file`` the conversation is read
from and written to a JSON file after every round: OpenAI-style messages (``[{"role", "content"}, ...]``; a list of
``[query, response]`` pairs, the earlier form, is read too). With ``--tp N`` the model is split over N ranks
(``glm_engine.cli.ranks``): rank 0 reads the queries and prints the replies.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from glm_engine.checkpoint.atomic import write_atomically
from glm_engine.cli.errors import user_errors
from glm_engine.cli.model_kind import require_chat
from glm_engine.cli.option_checks import refuse_empty
from glm_engine.cli.output_paths import check_output_file
from glm_engine.cli.progress import progress_bar
from glm_engine.cli.ranks import run_session, shared_queries
from glm_engine.cli.run import check_backend_fits
from glm_engine.cli.typed_lines import typed_lines
from glm_engine.engine import Engine, load
from glm_engine.engine.arguments import is_valid_text
from glm_engine.errors import InputError
from glm_engine.generation.chat import DEFAULT_TOP_K, ChatOptions
from glm_engine.parallel.communicator import Communicator
from glm_engine.quant.spec import QuantSpec

History = list[dict[str, Any]]  # OpenAI-style messages

WELCOME = "欢迎使用 {name} 模型，输入内容即可进行对话，clear 清空对话历史，stop 终止程序"
USER_PROMPT = "\n用户："
BOT_PREFIX = "\n{name}："
STOP, CLEAR = "stop", "clear"
# A reply decoded mid-character ends in U+FFFD; the reference's demo waits for the next token before printing it.
INCOMPLETE_CHARACTER = "\ufffd"


def read_history(path: Path | None) -> History:
    """The messages stored in ``path`` (none if it does not exist yet); its folder must be writable, checked now
    rather than after the first reply. A list of ``[query, response]`` pairs (the earlier form) becomes messages."""
    if path is None:
        return []
    check_output_file(path, "--history-file")
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"--history-file {path} is not UTF-8 JSON: {exc}") from None
    if isinstance(data, list) and all(
        isinstance(r, list) and len(r) == 2 and all(isinstance(t, str) for t in r) for r in data
    ):
        data = [m for q, r in data for m in ({"role": "user", "content": q}, {"role": "assistant", "content": r})]
    elif not isinstance(data, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content", ""), str) for m in data
    ):
        raise InputError(
            f"--history-file {path} must hold a list of messages ({{'role': ..., 'content': ...}}) or of [query, "
            "response] string pairs"
        )
    for number, message in enumerate(data, start=1):  # JSON's \ud800-style escapes can spell text no tokenizer takes
        if not is_valid_text(json.dumps(message, ensure_ascii=False)):
            raise InputError(
                f"--history-file {path}: message {number} holds a lone surrogate (\\ud800-\\udfff), "
                "which is no text; fix or remove it"
            )
    return data


def write_history(path: Path | None, history: History) -> None:
    if path is not None:
        text = json.dumps(history, ensure_ascii=False, indent=1) + "\n"
        write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def with_system(history: History, system: str | None) -> History:
    """``history`` opened by the ``--system`` message (replacing one it already starts with)."""
    if system is None:
        return history
    if not is_valid_text(system):
        raise InputError("--system is not valid UTF-8 text; pass it again in your terminal's encoding")
    rest = history[1:] if history and history[0].get("role") == "system" else history
    return [{"role": "system", "content": system}, *rest]


class StreamPrinter:
    """Prints a growing reply as the reference's demo does: only the characters not printed yet."""

    def __init__(self) -> None:
        self.printed = ""

    def __call__(self, reply: str) -> None:
        if not reply.startswith(self.printed) or INCOMPLETE_CHARACTER in reply:
            return  # process_response rewrote earlier text, or a character is incomplete: wait
        print(reply[len(self.printed) :], end="", flush=True)
        self.printed = reply

    def finish(self, reply: str) -> None:
        """Print what streaming held back, so the final reply is on screen whole."""
        if reply != self.printed:
            print(reply if not reply.startswith(self.printed) else reply[len(self.printed) :], end="")
        print(flush=True)


def typed_queries() -> Iterator[str]:
    """Lines typed at the prompt until ``stop`` or end of input (``clear`` is passed on: it resets the history)."""
    for query in typed_lines(USER_PROMPT):
        if query == STOP:
            return
        if query:
            yield query
    print()  # end of input: finish the prompt's line


def show_tool_calls(reply: dict[str, Any]) -> None:
    for call in reply.get("tool_calls", []):
        function = call["function"]
        print(f"\n[tool call] {function['name']} {function['arguments']}", flush=True)


def converse(engine: Engine, comm: Communicator, history: History, options: dict, history_file: Path | None) -> None:
    """The read-reply loop: rank 0 reads standard input and prints; every rank computes each reply."""
    generator = torch.Generator().manual_seed(options["seed"])  # one random stream for the whole session
    leader = comm.is_leader
    name = engine.family.chat_name(engine.config)
    opening = [m for m in history[:1] if m.get("role") == "system"]  # what ``clear`` keeps
    engine.family.check_messages(engine.tokenizer, [*history, {"role": "user", "content": "?"}])  # refuse once, now
    if leader:
        print(WELCOME.format(name=name))
    for query in shared_queries(comm, typed_queries() if leader else None):
        if query == CLEAR:
            history = list(opening)
            if leader:
                write_history(history_file, history)
                if sys.stdout.isatty():
                    print("\033[2J\033[H", end="")
                print(WELCOME.format(name=name))
            continue
        printer = StreamPrinter() if leader else None
        if leader:
            print(BOT_PREFIX.format(name=name), end="", flush=True)
        messages = [*history, {"role": "user", "content": query}]
        try:
            reply = engine.chat(messages, generator=generator, on_text=printer, **options)
        except InputError as exc:  # e.g. the conversation outgrew --max-length: say so and keep the session
            if leader:
                print(f"\nerror: {exc}", file=sys.stderr)
            continue
        history = [*messages, reply]
        if leader:
            printer.finish(reply["content"])
            show_tool_calls(reply)
            write_history(history_file, history)


def chat(
    ctx: typer.Context,
    checkpoint: Annotated[
        str,
        typer.Option(
            help="a chat model's Hugging Face folder (ChatGLM-6B, ChatGLM2/3, GLM-4; fp16 or a quantized release), or "
            "a preset such as chatglm3-tiny (random weights)"
        ),
    ],
    backend: Annotated[str, typer.Option(help="backend name, or auto for the best available")] = "auto",
    dtype: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16; default: the backend's first choice")] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="the tokenizer file or its folder; default: the checkpoint's own")
    ] = None,
    system: Annotated[
        str | None, typer.Option(help="a system message that opens the conversation (ChatGLM3, GLM-4)")
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(help="tokens per round, prompt and history included; default: the release's chat() default"),
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="tokens per reply; takes precedence over --max-length")
    ] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", "--top_p", help="0 = off; default: the release's")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "--top_k", help="0 = off")] = DEFAULT_TOP_K,
    temperature: Annotated[float | None, typer.Option(help="default: the release's")] = None,
    greedy: Annotated[bool, typer.Option(help="argmax decoding instead of sampling (do_sample=False)")] = False,
    seed: Annotated[int, typer.Option()] = 1234,
    history_file: Annotated[
        Path | None, typer.Option(help="JSON file the conversation is read from and saved to after each round")
    ] = None,
    quant: Annotated[str | None, typer.Option(help="quantize the linears while loading: int8 or int4")] = None,
    quant_scheme: Annotated[str, typer.Option(help="rowwise or groupwise")] = "rowwise",
    quant_group_size: Annotated[int | None, typer.Option(help="columns per scale with groupwise")] = None,
    quant_output: Annotated[bool, typer.Option(help="also quantize lm_head (as chatglm.cpp does)")] = False,
    ort_provider: Annotated[
        str | None,
        typer.Option(help="--backend onnxruntime: cpu, cuda, tensorrt, migraphx, rocm or cann (default: best found)"),
    ] = None,
    tp: Annotated[
        int, typer.Option("--tp", help="tensor-parallel degree: ranks to split the model over (torchrun sets them)")
    ] = 1,
) -> None:
    """Chat with a chat model: one query per line, 'clear' forgets the conversation, 'stop' or end of input quits."""
    given = dict(max_length=max_length, top_p=top_p, temperature=temperature)
    options = dict(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        top_k=top_k,
        seed=seed,
        **{k: v for k, v in given.items() if v is not None},
    )
    load_args = dict(
        backend=backend,
        dtype=dtype,
        tokenizer=tokenizer,
        quant=quant,
        quant_scheme=quant_scheme,
        quant_group_size=quant_group_size,
        quant_output=quant_output,
        backend_options={"provider": ort_provider} if ort_provider else None,
    )
    with user_errors():
        refuse_empty({"--checkpoint": checkpoint, "--tokenizer": tokenizer})
        ChatOptions(**options)  # reject bad options before loading anything
        QuantSpec.requested(quant, quant_scheme, quant_group_size)
        check_backend_fits(checkpoint, backend, ort_provider)
        require_chat(checkpoint, backend)
        history = with_system(read_history(history_file), system)

    def serve(comm: Communicator, degree: int) -> None:
        with progress_bar("loading weights") if comm.is_leader else nullcontext(None) as progress:
            engine = load(checkpoint, progress=progress, tp=degree, communicator=comm, **load_args)
        if comm.is_leader:
            for note in engine.notes:
                print(f"[glm-engine] {note}", file=sys.stderr)
        converse(engine, comm, history, options, history_file)

    run_session(ctx, "chat", tp, backend, checkpoint, None, serve)
