"""``glm-engine convert-tp`` given bad input: one ``error:`` line, the right exit code, no traceback, no output
folder written. The input is the built-in demo model (3 heads: only TP 1 fits); every row fails before writing."""

from __future__ import annotations

import pytest

from tests.bad_input_table import USAGE_ERROR, assert_clean_failure, expand, invoke, make_bad_files, row

DEMO = ["--input-folder", "{demo}"]
NEW = ["--output-folder", "{tmp}/out-new"]

ROWS = [
    row("input-not-given", NEW, "Missing option '--input-folder'", USAGE_ERROR),
    row("input-missing", ["--input-folder", "{tmp}/nope", *NEW], "does not exist"),
    row("input-is-a-file", ["--input-folder", "{tmp}/a_file", *NEW, "--target-tp", "1"], "is a file"),
    row("output-not-given", DEMO, "Missing option '--output-folder'", USAGE_ERROR),
    row("output-non-empty-folder", [*DEMO, "--output-folder", "{tmp}/nonempty", "--target-tp", "1"], "not empty"),
    row("output-unwritable", [*DEMO, "--output-folder", "{unwritable}/out", "--target-tp", "1"], "takes no new files"),
    row("target-tp-zero", [*DEMO, *NEW, "--target-tp", "0"], "it must be at least 1"),
    row("target-tp-negative", [*DEMO, *NEW, "--target-tp", "-1"], "it must be at least 1"),
    row("target-tp-default-does-not-divide", [*DEMO, *NEW], "3 attention heads do not divide by 4"),
    row("target-tp-not-a-number", [*DEMO, *NEW, "--target-tp", "two"], "'--target-tp'", USAGE_ERROR),
    row("bit-width-unsupported", [*DEMO, *NEW, "--quantization-bit-width", "3"], "must be 4 or 8"),
    row("config-truncated-json", [*DEMO, *NEW, "--config", "{tmp}/truncated.json"], "is not valid UTF-8 JSON"),
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad-convert-tp"))


@pytest.mark.parametrize(("argv", "stdin", "exit_code", "fragment"), ROWS)
def test_convert_tp_refuses_bad_input_with_one_line(argv, stdin, exit_code, fragment, tmp):
    result = invoke(["convert-tp", *expand(argv, tmp)], stdin)
    assert_clean_failure(result, exit_code, fragment)
    assert not (tmp / "out-new").exists()
