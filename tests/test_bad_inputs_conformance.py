"""``glm-engine conformance`` given bad input: one ``error:`` line, the right exit code, no traceback; a report path
that cannot be written is refused before the checks run."""

from __future__ import annotations

import pytest

from tests.bad_input_table import USAGE_ERROR, assert_clean_failure, expand, invoke, make_bad_files, row

ONE = ["--op", "embedding", "--dtype", "fp32"]

ROWS = [
    row("backend-unknown", ["--backend", "nope"], "unknown backend 'nope'"),
    row("op-unknown", ["--op", "nope"], "unknown op nope"),
    row("op-empty-string", ["--op", ""], "unknown op"),
    row("dtype-unknown", ["--dtype", "fp8"], "unknown dtype 'fp8'"),
    row("dtype-unknown-for-the-model-checks", ["--op", "model", "--dtype", "fp8"], "unknown dtype 'fp8'"),
    row("mode-unknown", ["--mode", "nope"], "'--mode'", USAGE_ERROR),
    row("output-format-unknown", ["--output", "xml"], "'--output'", USAGE_ERROR),
    row("seed-not-a-number", ["--seed", "x"], "'--seed'", USAGE_ERROR),
    row("out-is-a-folder", [*ONE, "--out", "{tmp}/emptydir"], "is a folder; give the path of a file"),
    row("out-folder-missing", [*ONE, "--out", "{tmp}/nodir/report.md"], "its folder"),
    row("out-unwritable", [*ONE, "--out", "{unwritable}/report.md"], "cannot write into"),
    row("self-test-out-is-a-folder", ["--self-test", "--out", "{tmp}/emptydir"], "is a folder"),
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad-conformance"))


@pytest.mark.parametrize(("argv", "stdin", "exit_code", "fragment"), ROWS)
def test_conformance_refuses_bad_input_with_one_line(argv, stdin, exit_code, fragment, tmp, monkeypatch):
    import glm_engine.cli.conformance as command

    def no_checks(*args, **kwargs):
        raise AssertionError("the checks ran: the bad input was found only after them")

    for name in ("run_tests", "run_perf", "self_test"):
        monkeypatch.setattr(command, name, no_checks)  # every row must fail before them
    result = invoke(["conformance", *expand(argv, tmp)], stdin)
    assert_clean_failure(result, exit_code, fragment)
