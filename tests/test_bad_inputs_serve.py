"""``glm-engine serve`` given bad input: one ``error:`` line, the right exit code, no traceback, before the model
loads. Rows run in-process on the tiny random ChatGLM3 preset; a row the command accepted would start a server, so
starting one fails the row instead."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.bad_input_table import USAGE_ERROR, assert_clean_failure, expand, invoke, make_bad_files, row

SERVE = ["--checkpoint", "chatglm3-tiny", "--kv-cache-memory", "16MiB"]

ROWS = [
    row("checkpoint-not-given", [], "Missing option '--checkpoint'", USAGE_ERROR),
    row("checkpoint-empty-string", ["--checkpoint", ""], "--checkpoint is empty"),
    row("checkpoint-missing", ["--checkpoint", "{tmp}/nope"], "does not exist"),
    row("checkpoint-empty-folder", ["--checkpoint", "{tmp}/emptydir"], "is not a checkpoint"),
    row("port-negative", [*SERVE, "--port", "-1"], "--port must be in 0-65535"),
    row("port-beyond-16-bits", [*SERVE, "--port", "70000"], "--port must be in 0-65535"),
    row("port-not-a-number", [*SERVE, "--port", "http"], "'--port'", USAGE_ERROR),
    row("host-not-an-address", [*SERVE, "--host", "not a host!!"], "is no address here"),
    row("host-out-of-range", [*SERVE, "--host", "256.1.1.1"], "is no address here"),
    row("host-not-this-machine", [*SERVE, "--host", "192.0.2.1", "--port", "0"], "cannot listen on 192.0.2.1"),
    row("kv-cache-memory-words", [*SERVE, "--kv-cache-memory", "lots"], "give a size such as 2GiB"),
    row("kv-cache-memory-zero", [*SERVE, "--kv-cache-memory", "0"], "is empty; give a size or a fraction"),
    row("kv-cache-memory-negative", [*SERVE, "--kv-cache-memory", "-1"], "give a size such as 2GiB"),
    row("kv-cache-memory-fraction-above-one", [*SERVE, "--kv-cache-memory", "1.5"], "a size needs a unit"),
    row("kv-cache-memory-unknown-unit", [*SERVE, "--kv-cache-memory", "2PB"], "give a size such as 2GiB"),
    row("max-num-seqs-zero", [*SERVE, "--max-num-seqs", "0"], "check --prefill-chunk, --max-batch-tokens"),
    row("max-batch-tokens-zero", [*SERVE, "--max-batch-tokens", "0"], "check --prefill-chunk, --max-batch-tokens"),
    row("prefill-chunk-zero", [*SERVE, "--prefill-chunk", "0"], "the prefill chunk (0) must be between 1"),
    row("prefill-chunk-above-step", [*SERVE, "--prefill-chunk", "512"], "the prefill chunk (512) must be between"),
    row("max-queue-negative", [*SERVE, "--max-queue", "-1"], "--max-queue must be at least 0"),
    row("max-request-bytes-zero", [*SERVE, "--max-request-bytes", "0"], "--max-request-bytes must be at least 1"),
    row("shutdown-timeout-negative", [*SERVE, "--shutdown-timeout", "-1"], "--shutdown-timeout takes seconds >= 0"),
    row("shutdown-timeout-nan", [*SERVE, "--shutdown-timeout", "nan"], "--shutdown-timeout takes seconds >= 0"),
    row("api-key-empty", [*SERVE, "--api-key", ""], "--api-key is empty"),
    row("served-model-name-empty", [*SERVE, "--served-model-name", " "], "--served-model-name is empty"),
    row("tp-zero", [*SERVE, "--tp", "0"], "--tp must be at least 1"),
    row("tp-that-does-not-divide", [*SERVE, "--tp", "3"], "does not fit"),
    row("backend-graph-with-a-preset", [*SERVE, "--backend", "onnxruntime"], "is not an exported model"),
    row("backend-unknown", [*SERVE, "--backend", "nope"], "unknown backend 'nope'"),
    row("dtype-unknown", [*SERVE, "--dtype", "nope"], "unknown dtype 'nope'"),
    row("quant-unknown", [*SERVE, "--quant", "int2"], "unknown quantization 'int2'"),
    row("tokenizer-binary", [*SERVE, "--tokenizer", "{tmp}/garbage.bin"], "cannot load SentencePiece"),
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad-serve"))


@pytest.fixture(autouse=True)
def no_server(monkeypatch):
    """A row the command accepted would serve forever: starting the server fails the row instead."""
    import glm_engine.server.run as server

    def refuse(*args, **kwargs):
        raise AssertionError("the server started: the bad input was accepted")

    monkeypatch.setattr(server, "serve", refuse)


@pytest.mark.parametrize(("argv", "stdin", "exit_code", "fragment"), ROWS)
def test_serve_refuses_bad_input_with_one_line(argv, stdin, exit_code, fragment, tmp):
    result = invoke(["serve", *expand(argv, tmp)], stdin)
    assert_clean_failure(result, exit_code, fragment)


def test_a_port_in_use_is_one_line_before_loading_in_a_real_process():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "glm_engine.cli", "serve", *SERVE, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot listen on 127.0.0.1:{port}") and "choose another --port" in last
    assert "[glm-engine]" not in result.stderr  # refused before the model loads (its notes come after)
