"""``glm-engine run`` given bad input: one ``error:`` line, the right exit code, no traceback, and no answer folder
left behind by a run that failed (issue 18, item 8). Rows run in-process on the built-in demo model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.bad_input_table import USAGE_ERROR, assert_clean_failure, expand, invoke, make_bad_files, row

BEAMS = ["--sampling-strategy", "BeamSearchStrategy"]

ROWS = [
    # the model
    row("checkpoint-missing", ["--checkpoint", "{tmp}/nope"], "does not exist"),
    row("checkpoint-is-a-file", ["--checkpoint", "{tmp}/a_file"], "is a file; pass the folder that holds it"),
    row("checkpoint-empty-folder", ["--checkpoint", "{tmp}/emptydir"], "is not a checkpoint"),
    row("checkpoint-unknown-preset", ["--checkpoint", "glm-tinyy"], "does not exist"),
    row("checkpoint-empty-string", ["--checkpoint", ""], "--checkpoint is empty"),
    row("checkpoint-huge-preset", ["--checkpoint", "glm-130b"], "random weights are only for small presets"),
    row("checkpoint-chat-model", ["--checkpoint", "chatglm-tiny"], "which chats; `glm-engine run` fills GLM blanks"),
    row("config-unknown", ["--config", "nope"], "is neither a preset"),
    row("config-empty-string", ["--config", ""], "--config is empty"),
    row("config-truncated-json", ["--config", "{tmp}/truncated.json"], "is not valid UTF-8 JSON"),
    row("config-json-list", ["--config", "{tmp}/list.json"], "must hold a JSON object"),
    row("config-binary", ["--config", "{tmp}/garbage.bin"], "is not valid UTF-8 JSON"),
    row("config-empty-file", ["--config", "{tmp}/empty.txt"], "is not valid UTF-8 JSON"),
    row("config-folder", ["--config", "{tmp}/emptydir"], "is neither a preset"),
    row("config-other-family", ["--checkpoint", "glm-tiny", "--config", "chatglm-tiny"], "must be a GLM-130B config"),
    row("tokenizer-missing", ["--tokenizer", "{tmp}/nope.model"], "looked in"),
    row("tokenizer-binary", ["--tokenizer", "{tmp}/garbage.bin"], "cannot load SentencePiece"),
    row("tokenizer-empty-file", ["--tokenizer", "{tmp}/empty.txt"], "cannot load SentencePiece"),
    row("tokenizer-folder-without-model", ["--tokenizer", "{tmp}/emptydir"], "ice_text.model not found"),
    row("tokenizer-folder-with-garbage", ["--tokenizer", "{tmp}/tokdir"], "cannot load SentencePiece"),
    row("tokenizer-empty-string", ["--tokenizer", ""], "--tokenizer is empty"),
    # the queries
    row("input-missing", ["--input-source", "{tmp}/nope.txt"], "neither 'interactive' nor an existing file"),
    row("input-folder", ["--input-source", "{tmp}/emptydir"], "neither 'interactive' nor an existing file"),
    row("input-empty-file", ["--input-source", "{tmp}/empty.txt"], "has no queries"),
    row("input-blank-lines", ["--input-source", "{tmp}/blank.txt"], "has no queries"),
    row("input-binary", ["--input-source", "{tmp}/garbage.bin"], "is not UTF-8 text"),
    row("input-latin1", ["--input-source", "{tmp}/latin1.txt"], "is not UTF-8 text"),
    row("with-id-without-tab", ["--input-source", "{tmp}/ids_notab.tsv", "--with-id"], "needs 'id<TAB>text' lines"),
    row("with-id-repeated", ["--input-source", "{tmp}/ids_dup.tsv", "--with-id"], "ids must be unique"),
    row("with-id-unsafe", ["--input-source", "{tmp}/ids_unsafe.tsv", "--with-id"], "cannot name an answer file"),
    row("with-id-too-long", ["--input-source", "{tmp}/ids_long.tsv", "--with-id"], "is too long for a file name"),
    # where the answers go
    row("output-path-is-a-file", ["--output-path", "{tmp}/a_file"], "is a file; give a folder"),
    row("output-path-under-a-file", ["--output-path", "{tmp}/a_file/sub"], "is a file, not a folder"),
    row("output-path-unwritable", ["--output-path", "{unwritable}/answers"], "cannot write into"),
    # generation options
    row("out-seq-length-zero", ["--out-seq-length", "0"], "out_seq_length must be > 0"),
    row("out-seq-length-negative", ["--out-seq-length", "-5"], "out_seq_length must be > 0"),
    row("out-seq-length-beyond-positions", ["--out-seq-length", "100000"], "exceeds the model's maximum sequence"),
    row("out-seq-length-not-a-number", ["--out-seq-length", "many"], "'--out-seq-length'", USAGE_ERROR),
    row("seed-beyond-64-bits", ["--seed", str(2**64)], "seed must fit in 64 bits"),
    row("seed-far-negative", ["--seed", str(-(2**70))], "seed must fit in 64 bits"),
    row("seed-not-a-number", ["--seed", "abc"], "'--seed'", USAGE_ERROR),
    row("top-p-above-one", ["--top-p", "1.5"], "top_p must be in [0, 1]"),
    row("top-p-negative", ["--top-p", "-0.1"], "top_p must be in [0, 1]"),
    row("top-p-nan", ["--top-p", "nan"], "top_p must be in [0, 1]"),
    row("top-k-negative", ["--top-k", "-1"], "top_k must be >= 0"),
    row("top-k-not-a-number", ["--top-k", "abc"], "'--top-k'", USAGE_ERROR),
    row("temperature-zero", ["--temperature", "0"], "temperature must be a finite number > 0"),
    row("temperature-negative", ["--temperature", "-1"], "temperature must be a finite number > 0"),
    row("temperature-nan", ["--temperature", "nan"], "temperature must be a finite number > 0"),
    row("temperature-infinite", ["--temperature", "inf"], "temperature must be a finite number > 0"),
    row("num-beams-zero", [*BEAMS, "--num-beams", "0"], "num_beams must be >= 1"),
    row("num-beams-beyond-vocabulary", [*BEAMS, "--num-beams", "100000"], "more than the model's"),
    row("length-penalty-nan", [*BEAMS, "--length-penalty", "nan"], "length_penalty must be a finite number"),
    row("length-penalty-infinite", [*BEAMS, "--length-penalty", "inf"], "length_penalty must be a finite number"),
    row("no-repeat-ngram-one", ["--no-repeat-ngram-size", "1"], "no_repeat_ngram_size must be 0 (off) or >= 2"),
    row("min-gen-length-negative", ["--min-gen-length", "-1"], "min_gen_length must be >= 0"),
    row("strategy-unknown", ["--sampling-strategy", "Greedy"], "'--sampling-strategy'", USAGE_ERROR),
    # where and how it runs
    row("tp-zero", ["--tp", "0"], "--tp must be at least 1"),
    row("tp-negative", ["--tp", "-2"], "--tp must be at least 1"),
    row("tp-that-does-not-divide", ["--tp", "3"], "does not fit the built-in demo model"),
    row("tp-with-a-graph-backend", ["--tp", "2", "--backend", "onnxruntime"], "tensor-parallel degree 2 does not fit"),
    row("backend-unknown", ["--backend", "tpu"], "unknown backend 'tpu'"),
    row("backend-wrong-case", ["--backend", "CPUx"], "unknown backend"),
    row("backend-empty-string", ["--backend", ""], "unknown backend ''"),
    row("graph-backend-with-a-checkpoint", ["--backend", "onnxruntime"], "is not an exported model"),
    row("ort-provider-without-onnxruntime", ["--ort-provider", "cuda"], "it goes with --backend onnxruntime"),
    row("dtype-unknown", ["--dtype", "fp8"], "unknown dtype 'fp8'"),
    row("dtype-integer", ["--dtype", "int8"], "unknown dtype 'int8'"),
    row("dtype-empty-string", ["--dtype", ""], "unknown dtype ''"),
    row("quant-unknown", ["--quant", "int3"], "unknown quantization 'int3'"),
    row("quant-scheme-unknown", ["--quant", "int4", "--quant-scheme", "foo"], "unknown quantization scheme"),
    row(
        "quant-group-size-unsupported",
        ["--quant", "int4", "--quant-scheme", "groupwise", "--quant-group-size", "7"],
        "group size must be one of 32, 64, 128",
    ),
    row("quant-group-size-without-quant", ["--quant-group-size", "64"], "must go with --quant int8|int4"),
    row("quant-output-without-quant", ["--quant-output"], "add --quant int8|int4"),
    row(
        "quant-group-that-does-not-divide",
        ["--quant", "int4", "--quant-scheme", "groupwise", "--quant-group-size", "128"],
        "does not divide",
    ),
    row("unknown-flag", ["--no-such-flag"], "No such option", USAGE_ERROR),
    # typed at the prompt: reported, and the session goes on (exit 0)
    row("typed-invalid-utf8", ["--out-seq-length", "12"], "not valid UTF-8", 0, b"\xff\xfe bad\nstop\n"),
    row("typed-too-long", ["--out-seq-length", "12"], "text too long", 0, "word " * 3000 + "\nstop\n"),
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad-run"))


@pytest.mark.parametrize(("argv", "stdin", "exit_code", "fragment"), ROWS)
def test_run_refuses_bad_input_with_one_line(argv, stdin, exit_code, fragment, tmp, tmp_path):
    answers = tmp_path / "answers"
    argv = expand(argv, tmp)
    if "--output-path" not in argv:
        argv += ["--output-path", str(answers)]
    result = invoke(["run", *argv], stdin if stdin is not None else "stop\n")
    assert_clean_failure(result, exit_code, fragment)
    if exit_code != 0:
        assert not answers.exists()  # a run that failed leaves no answer folder (issue 18, item 8)


def test_a_file_that_fails_after_loading_still_creates_no_answer_folder(tmp_path):
    """Every query refused (too long for the model): the folder would have been created for nothing."""
    queries = tmp_path / "q.txt"
    queries.write_text("word " * 3000 + "\n")
    answers = tmp_path / "answers"
    result = invoke(["run", "--input-source", str(queries), "--output-path", str(answers), "--out-seq-length", "12"])
    assert result.exit_code == 1 and "text too long" in result.stderr and "Traceback" not in result.output
    assert not answers.exists()


def test_bad_bytes_in_an_argument_are_one_line_in_a_real_process(tmp_path):
    """The shell passes arguments as bytes: one that is not UTF-8 reaches Python as a lone surrogate."""
    path = str(tmp_path).encode() + b"/\xff.txt"
    result = subprocess.run(
        [sys.executable, "-m", "glm_engine.cli", "run", b"--input-source", path],
        capture_output=True,
        timeout=120,
    )
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 1 and b"Traceback" not in result.stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: --input-source")
