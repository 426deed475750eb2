"""``glm-engine backends`` given bad input: click's one ``Error:`` line and exit code 2, no traceback."""

from __future__ import annotations

import pytest

from tests.bad_input_table import USAGE_ERROR, assert_clean_failure, invoke, row

ROWS = [
    row("format-unknown", ["--format", "xml"], "'--format'", USAGE_ERROR),
    row("format-empty-string", ["--format", ""], "'--format'", USAGE_ERROR),
    row("unknown-flag", ["--nope"], "No such option: --nope", USAGE_ERROR),
    row("unexpected-argument", ["cpu"], "Got unexpected extra argument", USAGE_ERROR),
]


@pytest.mark.parametrize(("argv", "stdin", "exit_code", "fragment"), ROWS)
def test_backends_refuses_bad_input_with_one_line(argv, stdin, exit_code, fragment):
    assert_clean_failure(invoke(["backends", *argv], stdin), exit_code, fragment)
