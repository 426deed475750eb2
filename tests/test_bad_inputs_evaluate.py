"""``glm-engine evaluate`` given bad input: one ``error:`` line, the right exit code, no traceback, and a report path
that cannot be written refused before the model loads (issue 18, item 8). Rows run in-process on the demo model."""

from __future__ import annotations

import pytest

from tests.bad_input_table import USAGE_ERROR, assert_clean_failure, expand, invoke, make_bad_files, row

GOOD = ["{tmp}/good.yaml", "--backend", "cpu"]

ROWS = [
    row("task-missing", ["{tmp}/nope.yaml"], "no such file or folder"),
    row("task-empty-string", [""], "a task argument is empty"),
    row("task-option-empty-string", ["--task", ""], "--task is empty"),
    row("task-folder-without-yaml", ["{tmp}/emptydir"], "no *.yaml task files"),
    row("task-not-a-mapping", ["{tmp}/a_file"], "must be a mapping"),
    row("task-binary", ["{tmp}/garbage.yaml"], "not UTF-8 text"),
    row("task-empty-file", ["{tmp}/empty.yaml"], "must be a mapping"),
    row("task-bad-yaml", ["{tmp}/bad_syntax.yaml"], "not valid YAML"),
    row("task-a-list", ["{tmp}/list.yaml"], "must be a mapping"),
    row("task-unknown-type", ["{tmp}/bad_type.yaml"], "type must be one of mul, gen, lm"),
    row("task-unknown-key", ["{tmp}/unknown_key.yaml"], "unknown key 'batch_size'"),
    row("task-data-missing", ["{tmp}/missing_data.yaml"], "does not exist"),
    row("task-max-gen-length-zero", ["{tmp}/zero_gen.yaml"], "max_gen_length must be at least 1"),
    row("task-num-beams-beyond-vocabulary", ["{tmp}/beams.yaml", "--backend", "cpu"], "more than the model's"),
    row("task-length-penalty-nan", ["{tmp}/nan_penalty.yaml"], "length_penalty must be a finite number"),
    row("data-path-missing", [*GOOD, "--data-path", "{tmp}/nodir"], "does not exist"),
    row("data-path-a-file", [*GOOD, "--data-path", "{tmp}/a_file"], "does not exist"),
    row("out-is-a-folder", [*GOOD, "--out", "{tmp}/emptydir"], "is a folder; give the path of a file"),
    row("out-folder-missing", [*GOOD, "--out", "{tmp}/nodir/report.txt"], "its folder"),
    row("out-under-a-file", [*GOOD, "--out", "{tmp}/a_file/report.txt"], "is a file, not a folder"),
    row("out-unwritable", [*GOOD, "--out", "{unwritable}/report.txt"], "cannot write into"),
    row("output-format-unknown", [*GOOD, "--output", "xml"], "'--output'", USAGE_ERROR),
    row("checkpoint-empty-string", [*GOOD, "--checkpoint", ""], "--checkpoint is empty"),
    row("checkpoint-empty-folder", [*GOOD, "--checkpoint", "{tmp}/emptydir"], "is not a checkpoint"),
    row("checkpoint-chat-only", [*GOOD, "--checkpoint", "chatglm-tiny"], "which chats"),
    row("causal-model-generation-tasks", ["examples", "--checkpoint", "chatglm3-tiny"], "fill GLM blanks"),
    row("config-other-family", [*GOOD, "--checkpoint", "glm-tiny", "--config", "chatglm-tiny"], "GLM-130B config"),
    row("config-truncated-json", [*GOOD, "--config", "{tmp}/truncated.json"], "is not valid UTF-8 JSON"),
    row("tokenizer-binary", [*GOOD, "--tokenizer", "{tmp}/garbage.bin"], "cannot load SentencePiece"),
    row("backend-unknown", [*GOOD, "--backend", "nope"], "unknown backend 'nope'"),
    row("dtype-unknown", [*GOOD, "--dtype", "fp8"], "unknown dtype 'fp8'"),
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad-evaluate"))


@pytest.mark.parametrize(("argv", "stdin", "exit_code", "fragment"), ROWS)
def test_evaluate_refuses_bad_input_with_one_line(argv, stdin, exit_code, fragment, tmp, monkeypatch):
    import glm_engine.cli.evaluate as command

    def no_scoring(*args, **kwargs):
        raise AssertionError("evaluate scored the tasks: the bad input was found only after the compute")

    monkeypatch.setattr(command, "run_prepared", no_scoring)  # every row must fail before it
    result = invoke(["evaluate", *expand(argv, tmp)], stdin)
    assert_clean_failure(result, exit_code, fragment)
