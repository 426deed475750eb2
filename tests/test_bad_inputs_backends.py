"""``glm-engine backends`` given bad input: click's one ``Error:`` line and exit code 2, no traceback; and its table
printing an install hint's brackets as written."""

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


def test_backends_keeps_the_brackets_of_the_onnx_install_hint(monkeypatch):
    """Issue 18, item 9: without onnxruntime, the table's reason reads ``pip install 'glm-engine[onnx]'`` in full
    (rich markup took ``[onnx]`` for a style tag and dropped it)."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    )
    result = invoke(["backends"])
    assert result.exit_code == 0, result.output
    # the reason column, its folded lines joined: column 4 of the rows between the table's borders
    column = [line.split("│")[4].strip() for line in result.output.splitlines() if line.count("│") == 8]
    assert "(pip install 'glm-engine[onnx]')" in " ".join(column), result.output
