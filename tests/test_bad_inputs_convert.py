"""``glm-engine convert`` given bad input: one ``error:`` line, the right exit code, no traceback, and no output
folder written. The input is the built-in demo model; every row fails before converting it."""

from __future__ import annotations

import pytest

from tests.bad_input_table import USAGE_ERROR, assert_clean_failure, expand, invoke, make_bad_files, row

DEMO = ["--input", "{demo}"]
NEW = ["--output", "{tmp}/out-new"]

ROWS = [
    row("input-not-given", NEW, "Missing option '--input'", USAGE_ERROR),
    row("input-missing", ["--input", "{tmp}/nope", *NEW], "does not exist"),
    row("input-is-a-file", ["--input", "{tmp}/a_file", *NEW], "is a file; pass the folder that holds it"),
    row("input-empty-folder", ["--input", "{tmp}/emptydir", *NEW], "is not a checkpoint"),
    row("output-not-given", DEMO, "Missing option '--output'", USAGE_ERROR),
    row("output-non-empty-folder", [*DEMO, "--output", "{tmp}/nonempty"], "already exists and is not empty"),
    row("output-is-the-input", [*DEMO, "--output", "{demo}"], "already exists and is not empty"),
    row("output-is-an-empty-file", [*DEMO, "--output", "{tmp}/empty.txt"], "is a file, not a folder"),
    row("output-unwritable", [*DEMO, "--output", "{unwritable}/out"], "takes no new files"),
    row("shard-size-zero", [*DEMO, *NEW, "--shard-size-gb", "0"], "--shard-size-gb must be positive"),
    row("shard-size-negative", [*DEMO, *NEW, "--shard-size-gb", "-1"], "--shard-size-gb must be positive"),
    row("shard-size-nan", [*DEMO, *NEW, "--shard-size-gb", "nan"], "--shard-size-gb must be positive and finite"),
    row("shard-size-infinite", [*DEMO, *NEW, "--shard-size-gb", "inf"], "--shard-size-gb must be positive and finite"),
    row("shard-size-not-a-number", [*DEMO, *NEW, "--shard-size-gb", "big"], "'--shard-size-gb'", USAGE_ERROR),
    row("to-unknown", [*DEMO, *NEW, "--to", "gguf"], "'--to'", USAGE_ERROR),
    row("sat-tp-zero", [*DEMO, *NEW, "--to", "sat", "--tp", "0"], "it must be at least 1"),
    row("sat-tp-that-does-not-divide", [*DEMO, *NEW, "--to", "sat", "--tp", "3"], "do not divide by 3"),
    row("config-truncated-json", [*DEMO, *NEW, "--config", "{tmp}/truncated.json"], "is not valid UTF-8 JSON"),
    row("config-other-shapes", [*DEMO, *NEW, "--config", "chatglm-tiny"], "does not match the model config"),
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad-convert"))


@pytest.mark.parametrize(("argv", "stdin", "exit_code", "fragment"), ROWS)
def test_convert_refuses_bad_input_with_one_line(argv, stdin, exit_code, fragment, tmp):
    result = invoke(["convert", *expand(argv, tmp)], stdin)
    assert_clean_failure(result, exit_code, fragment)
    assert not (tmp / "out-new").exists()
