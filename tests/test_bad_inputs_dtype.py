"""Every command with ``--dtype`` takes the usual spellings ``float16``, ``bfloat16`` and ``float32`` as it takes
``fp16``, ``bf16`` and ``fp32`` (issue 18, item 9: they were refused).

Each command is given the spelling together with an input that fails right after the dtype is read (a garbage
tokenizer, an empty checkpoint folder, an unknown backend or test), so the row costs no model load: the later error
shows that the spelling was accepted, and the same arguments with ``fp8`` show that the dtype is indeed read first.
"""

from __future__ import annotations

import pytest

from tests.bad_input_table import assert_clean_failure, expand, invoke, make_bad_files

# command line (``{dtype}`` filled in) and the error it must reach once the dtype is accepted
COMMANDS = {
    "run": (["run", "--checkpoint", "{demo}", "--tokenizer", "{tmp}/tokdir"], "cannot load SentencePiece"),
    "chat": (["chat", "--checkpoint", "chatglm-tiny", "--tokenizer", "{tmp}/tokdir"], "cannot load SentencePiece"),
    "evaluate": (["evaluate", "--checkpoint", "{demo}", "--tokenizer", "{tmp}/tokdir"], "cannot load SentencePiece"),
    "serve": (["serve", "--checkpoint", "{tmp}/emptydir"], "is not a checkpoint"),
    "bench": (["bench", "-t", "xx9"], "unknown test 'xx9'"),
    "conformance": (["conformance", "--backend", "nope"], "unknown backend 'nope'"),
    "export-onnx": (
        ["export", "onnx", "--output", "{tmp}/out-new", "--checkpoint", "{tmp}/emptydir"],
        "not a checkpoint",
    ),
}
USUAL_SPELLINGS = ("float16", "bfloat16", "float32")


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad-dtype"))


@pytest.mark.parametrize("spelling", USUAL_SPELLINGS)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_dtype_option_takes_the_usual_spellings(command, spelling, tmp):
    argv, later_error = COMMANDS[command]
    result = invoke(expand([*argv, "--dtype", spelling], tmp), "")
    assert_clean_failure(result, 1, later_error)
    assert not (tmp / "out-new").exists()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_the_dtype_is_read_before_the_error_those_rows_reach(command, tmp):
    argv, _ = COMMANDS[command]
    assert_clean_failure(invoke(expand([*argv, "--dtype", "fp8"], tmp), ""), 1, "unknown dtype 'fp8'")
