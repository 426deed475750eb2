"""``glm-engine chat`` given bad input: one ``error:`` line, the right exit code, no traceback. Rows run in-process
on the tiny random ChatGLM3 preset; a bad typed line is reported and the session goes on (exit 0)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.bad_input_table import USAGE_ERROR, assert_clean_failure, expand, invoke, make_bad_files, row

CHAT = ["--checkpoint", "chatglm3-tiny"]
SHORT = [*CHAT, "--max-new-tokens", "4", "--greedy"]

ROWS = [
    row("checkpoint-not-given", [], "Missing option '--checkpoint'", USAGE_ERROR),
    row("checkpoint-empty-string", ["--checkpoint", ""], "--checkpoint is empty"),
    row("checkpoint-missing", ["--checkpoint", "{tmp}/nope"], "does not exist"),
    row("checkpoint-is-a-file", ["--checkpoint", "{tmp}/a_file"], "is a file; pass the folder that holds it"),
    row("checkpoint-empty-folder", ["--checkpoint", "{tmp}/emptydir"], "is not a checkpoint"),
    row("checkpoint-without-chat-format", ["--checkpoint", "glm-tiny"], "which has no chat format"),
    row("history-is-a-folder", [*CHAT, "--history-file", "{tmp}/emptydir"], "is a folder; give the path of a file"),
    row("history-folder-missing", [*CHAT, "--history-file", "{tmp}/nodir/h.json"], "its folder"),
    row("history-unwritable", [*CHAT, "--history-file", "{unwritable}/h.json"], "cannot write into"),
    row("history-binary", [*CHAT, "--history-file", "{tmp}/garbage.bin"], "is not UTF-8 JSON"),
    row("history-empty-file", [*CHAT, "--history-file", "{tmp}/empty.txt"], "is not UTF-8 JSON"),
    row("history-an-object", [*CHAT, "--history-file", "{tmp}/hist_object.json"], "must hold a list of messages"),
    row("history-pairs-of-numbers", [*CHAT, "--history-file", "{tmp}/hist_pairs.json"], "must hold a list"),
    row("history-unknown-role", [*SHORT, "--history-file", "{tmp}/hist_role.json"], "has role 'wizard'"),
    row("history-lone-surrogate", [*SHORT, "--history-file", "{tmp}/hist_surrogate.json"], "lone surrogate"),
    row("max-length-zero", [*CHAT, "--max-length", "0"], "max_length must be > 0"),
    row("max-new-tokens-zero", [*CHAT, "--max-new-tokens", "0"], "max_new_tokens must be > 0"),
    row("max-new-tokens-negative", [*CHAT, "--max-new-tokens", "-3"], "max_new_tokens must be > 0"),
    row("top-p-above-one", [*CHAT, "--top-p", "2"], "top_p must be in [0, 1]"),
    row("top-k-negative", [*CHAT, "--top-k", "-3"], "top_k must be >= 0"),
    row("temperature-zero", [*CHAT, "--temperature", "0"], "temperature must be a finite number > 0"),
    row("temperature-infinite", [*CHAT, "--temperature", "inf"], "temperature must be a finite number > 0"),
    row("seed-beyond-64-bits", [*SHORT, "--seed", str(2**80)], "seed must fit in 64 bits"),
    row("seed-not-a-number", [*CHAT, "--seed", "x"], "'--seed'", USAGE_ERROR),
    row("system-for-a-release-without-one", ["--checkpoint", "chatglm-tiny", "--system", "hi"], "no system prompt"),
    row("tp-zero", [*CHAT, "--tp", "0"], "--tp must be at least 1"),
    row("tp-that-does-not-divide", [*CHAT, "--tp", "5"], "does not fit"),
    row("dtype-unknown", [*CHAT, "--dtype", "fp8"], "unknown dtype 'fp8'"),
    row("backend-unknown", [*CHAT, "--backend", "nope"], "unknown backend 'nope'"),
    row("ort-provider-without-onnxruntime", [*CHAT, "--ort-provider", "cuda"], "it goes with --backend onnxruntime"),
    row("tokenizer-binary", [*CHAT, "--tokenizer", "{tmp}/garbage.bin"], "cannot load SentencePiece"),
    row("tokenizer-folder-without-model", [*CHAT, "--tokenizer", "{tmp}/emptydir"], "no tokenizer.model"),
    row("tokenizer-empty-string", [*CHAT, "--tokenizer", ""], "--tokenizer is empty"),
    row(
        "quant-group-size-unsupported",
        [*CHAT, "--quant", "int4", "--quant-scheme", "groupwise", "--quant-group-size", "3"],
        "group size must be one of 32, 64, 128",
    ),
    row("quant-scheme-without-quant", [*CHAT, "--quant-scheme", "groupwise"], "must go with --quant int8|int4"),
    # typed at the prompt: reported, and the session goes on
    row("typed-invalid-utf8", SHORT, "not valid UTF-8", 0, b"\xff\xfe bad\nhi\nstop\n"),
    row("typed-beyond-max-length", [*CHAT, "--max-length", "8"], "leaves no room below max_length", 0, "hi " * 20),
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad-chat"))


@pytest.mark.parametrize(("argv", "stdin", "exit_code", "fragment"), ROWS)
def test_chat_refuses_bad_input_with_one_line(argv, stdin, exit_code, fragment, tmp):
    result = invoke(["chat", *expand(argv, tmp)], stdin if stdin is not None else "hi\nstop\n")
    assert_clean_failure(result, exit_code, fragment)


def test_a_system_message_that_is_not_utf8_is_refused_in_a_real_process():
    """A byte that is not UTF-8 in an argument reaches Python as a lone surrogate; sentencepiece raised on it."""
    result = subprocess.run(
        [sys.executable, "-m", "glm_engine.cli", "chat", *CHAT, b"--system", b"caf\xe9"],
        input=b"hi\nstop\n",
        capture_output=True,
        timeout=120,
    )
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 1 and b"Traceback" not in result.stderr, stderr
    assert (
        stderr.strip().splitlines()[-1]
        == "error: --system is not valid UTF-8 text; pass it again in your terminal's encoding"
    )
