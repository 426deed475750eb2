"""``glm-engine export onnx`` and ``export tensorrt`` given bad input: one ``error:`` line, the right exit code, no
traceback, no output folder written. The model is the built-in demo model; every row fails before exporting it."""

from __future__ import annotations

import pytest

from tests.bad_input_table import USAGE_ERROR, assert_clean_failure, expand, invoke, make_bad_files, row

NEW = ["--output", "{tmp}/out-new"]

ROWS = [
    row("no-subcommand-name", ["gguf"], "No such command 'gguf'", USAGE_ERROR),
    row("onnx-output-not-given", ["onnx"], "Missing option '--output'", USAGE_ERROR),
    row("onnx-checkpoint-missing", ["onnx", *NEW, "--checkpoint", "{tmp}/nope"], "does not exist"),
    row("onnx-checkpoint-empty-folder", ["onnx", *NEW, "--checkpoint", "{tmp}/emptydir"], "is not a checkpoint"),
    row("onnx-checkpoint-huge-preset", ["onnx", *NEW, "--checkpoint", "glm-130b"], "only for small presets"),
    row("onnx-output-a-file", ["onnx", "--output", "{tmp}/a_file"], "is a file, not a folder"),
    row("onnx-output-non-empty-folder", ["onnx", "--output", "{tmp}/nonempty"], "already exists and is not empty"),
    row("onnx-output-unwritable", ["onnx", "--output", "{unwritable}/out"], "takes no new files"),
    row("onnx-dtype-integer", ["onnx", *NEW, "--dtype", "int8"], "unknown dtype 'int8'"),
    row("onnx-max-seq-zero", ["onnx", *NEW, "--max-seq", "0"], "--max-seq must lie in [1, 512]"),
    row("onnx-max-seq-beyond-positions", ["onnx", *NEW, "--max-seq", "100000"], "--max-seq must lie in [1, 512]"),
    row("onnx-quant-unknown", ["onnx", *NEW, "--quant", "int3"], "unknown quantization 'int3'"),
    row("onnx-group-size-without-quant", ["onnx", *NEW, "--group-size", "64"], "must go with --quant"),
    row("onnx-target-unknown", ["onnx", *NEW, "--target", "nope"], "--target must be ort or tensorrt"),
    row("onnx-accuracy-level-unknown", ["onnx", *NEW, "--accuracy-level", "9"], "--accuracy-level must be 0-4"),
    row("onnx-config-truncated-json", ["onnx", *NEW, "--config", "{tmp}/truncated.json"], "not valid UTF-8 JSON"),
    row("tensorrt-onnx-not-given", ["tensorrt", *NEW], "Missing option '--onnx'", USAGE_ERROR),
    row("tensorrt-onnx-missing", ["tensorrt", "--onnx", "{tmp}/nope", *NEW], "is not an exported model"),
    row("tensorrt-onnx-not-an-export", ["tensorrt", "--onnx", "{demo}", *NEW], "is not an exported model"),
    row("tensorrt-max-batch-zero", ["tensorrt", "--onnx", "{tmp}/emptydir", *NEW, "--max-batch", "0"], "--max-batch"),
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad-export"))


@pytest.mark.parametrize(("argv", "stdin", "exit_code", "fragment"), ROWS)
def test_export_refuses_bad_input_with_one_line(argv, stdin, exit_code, fragment, tmp):
    result = invoke(["export", *expand(argv, tmp)], stdin)
    assert_clean_failure(result, exit_code, fragment)
    assert not (tmp / "out-new").exists()
