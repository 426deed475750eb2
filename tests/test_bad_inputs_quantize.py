"""``glm-engine quantize`` given bad input: one ``error:`` line, the right exit code, no traceback, no output folder
written. The input is the built-in demo model; every row fails before quantizing it."""

from __future__ import annotations

import pytest

from tests.bad_input_table import USAGE_ERROR, assert_clean_failure, expand, invoke, make_bad_files, row

DEMO = ["--checkpoint", "{demo}"]
NEW = ["--output", "{tmp}/out-new"]

ROWS = [
    row("checkpoint-not-given", NEW, "Missing option '--checkpoint'", USAGE_ERROR),
    row("checkpoint-missing", ["--checkpoint", "{tmp}/nope", *NEW], "does not exist"),
    row("checkpoint-is-a-file", ["--checkpoint", "{tmp}/a_file", *NEW], "is a file; pass the folder"),
    row("checkpoint-empty-folder", ["--checkpoint", "{tmp}/emptydir", *NEW], "is not a checkpoint"),
    row("output-non-empty-folder", [*DEMO, "--output", "{tmp}/nonempty"], "already exists and is not empty"),
    row("output-a-file", [*DEMO, "--output", "{tmp}/a_file"], "is a file, not a folder"),
    row("output-unwritable", [*DEMO, "--output", "{unwritable}/out"], "takes no new files"),
    row("bits-unsupported", [*DEMO, *NEW, "--bits", "3"], "--bits must be 4 or 8, got 3"),
    row("bits-not-a-number", [*DEMO, *NEW, "--bits", "abc"], "'--bits'", USAGE_ERROR),
    row("scheme-unknown", [*DEMO, *NEW, "--scheme", "nope"], "unknown quantization scheme 'nope'"),
    row("group-size-unsupported", [*DEMO, *NEW, "--scheme", "groupwise", "--group-size", "7"], "one of 32, 64, 128"),
    row("group-size-with-rowwise", [*DEMO, *NEW, "--group-size", "64"], "goes with the groupwise scheme"),
    row("group-that-does-not-divide", [*DEMO, *NEW, "--scheme", "groupwise"], "does not divide"),
    row("shard-size-zero", [*DEMO, *NEW, "--shard-size-gb", "0"], "--shard-size-gb must be positive"),
    row("shard-size-nan", [*DEMO, *NEW, "--shard-size-gb", "nan"], "--shard-size-gb must be positive and finite"),
    row("shard-size-infinite", [*DEMO, *NEW, "--shard-size-gb", "inf"], "--shard-size-gb must be positive and finite"),
    row("config-unknown", [*DEMO, *NEW, "--config", "nope"], "is neither a preset"),
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad-quantize"))


@pytest.mark.parametrize(("argv", "stdin", "exit_code", "fragment"), ROWS)
def test_quantize_refuses_bad_input_with_one_line(argv, stdin, exit_code, fragment, tmp):
    result = invoke(["quantize", *expand(argv, tmp)], stdin)
    assert_clean_failure(result, exit_code, fragment)
    assert not (tmp / "out-new").exists()
