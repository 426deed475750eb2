"""``glm-engine run`` and ``glm-engine backends`` end to end."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from glm_engine.cli.errors import USER_ERROR_EXIT_CODE
from glm_engine.cli.main import app

runner = CliRunner()
FAST = ["--out-seq-length", "24", "--seed", "3"]


def test_backends_table_lists_every_backend():
    result = runner.invoke(app, ["backends"])
    assert result.exit_code == 0
    for name in ("cpu", "cuda", "rocm_dcu", "ascend", "tensorrt"):
        assert name in result.output


def test_backends_table_prints_reasons_as_written(monkeypatch):
    """A reason is plain text: "pip install 'glm-engine[onnx]'" must not lose "[onnx]" to the table's markup."""
    from glm_engine.backends.base import Verdict
    from glm_engine.backends.registry import REGISTRY
    from glm_engine.backends.tensorrt import TensorRTBackend

    backend = REGISTRY.get("tensorrt")
    reason = "the onnx package is missing; pip install 'glm-engine[onnx]'"
    monkeypatch.setattr(TensorRTBackend, "availability", lambda self: Verdict(False, reason))
    result = runner.invoke(app, ["backends"])
    assert result.exit_code == 0 and backend.name in result.output
    cells = "".join(c for c in result.output if not c.isspace() and c != "│")  # the table folds long reasons
    assert "pipinstall'glm-engine[onnx]'" in cells


def test_run_and_chat_each_refuse_the_other_kind_of_model():
    chat_model = runner.invoke(app, ["run", "--checkpoint", "chatglm-tiny"], input="hello\nstop\n")
    assert chat_model.exit_code == USER_ERROR_EXIT_CODE
    assert "ChatGLM-6B model, which chats; `glm-engine run` fills GLM blanks" in chat_model.output
    assert "use `glm-engine chat --checkpoint chatglm-tiny`" in chat_model.output
    blank_model = runner.invoke(app, ["chat", "--checkpoint", "glm-tiny"], input="hello\nstop\n")
    assert blank_model.exit_code == USER_ERROR_EXIT_CODE
    assert "GLM-130B model, which has no chat format: run it with `glm-engine run" in blank_model.output
    evaluated = runner.invoke(app, ["evaluate", "--checkpoint", "chatglm-tiny", "--backend", "cpu"])
    assert evaluated.exit_code == USER_ERROR_EXIT_CODE and "Traceback" not in evaluated.output
    assert "use `glm-engine chat --checkpoint chatglm-tiny --backend cpu`" in evaluated.output


def test_backends_json_is_machine_readable():
    result = runner.invoke(app, ["backends", "--format", "json"])
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["cpu"]["available"] and rows["cpu"]["dtypes"] == ["fp32", "bf16", "fp16"]
    assert rows["cpu"]["distributed_backend"] == "gloo"
    assert rows["ascend"]["distributed_backend"] == "hccl"
    assert all(row["available"] or row["reason"] for row in rows.values())


def test_run_on_a_file_prints_and_saves_one_answer_file_per_query(tmp_path):
    queries = tmp_path / "queries.txt"
    queries.write_text("Hello [MASK] world\n\n天空是[MASK]色的\nno mask here\n", encoding="utf-8")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--input-source", str(queries), "--output-path", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert result.output.count("Input: ") == 3 and result.output.count("Output: ") == 3
    assert "Input: no mask here [gMASK]" in result.output
    files = sorted(out.iterdir())
    assert len(files) == 3
    for file in files:
        lines = file.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1 and lines[0]


def test_run_with_ids_and_beam_search_writes_every_beam(tmp_path):
    queries = tmp_path / "queries.tsv"
    queries.write_text("q1\tThe sky is [MASK].\nq2\tOnce upon a time\n", encoding="utf-8")
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "run",
            "--input-source",
            str(queries),
            "--output-path",
            str(out),
            "--with-id",
            "--sampling-strategy",
            "BeamSearchStrategy",
            "--num-beams",
            "3",
            "--print-all-beams",
            *FAST,
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["q1.txt", "q2.txt"]
    assert len((out / "q1.txt").read_text(encoding="utf-8").splitlines()) == 3
    assert "Output beam 2:" in result.output


def test_interactive_mode_answers_until_stop_and_survives_bad_input(tmp_path):
    stdin = "\nHello [MASK]\n" + "word " * 3000 + "\nstop\nnever read\n"
    result = runner.invoke(app, ["run", "--output-path", str(tmp_path), *FAST], input=stdin)
    assert result.exit_code == 0, result.output
    assert "Query should not be empty!" in result.output
    assert result.output.count("Output: ") == 1
    assert "text too long" in result.output
    assert "never read" not in result.output


def test_reference_underscore_spellings_are_accepted(tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("a [MASK] b\n")
    result = runner.invoke(
        app,
        [
            "run",
            "--input-source",
            str(queries),
            "--output-path",
            str(tmp_path / "o"),
            "--top_k",
            "1",
            "--top_p",
            "0",
            *FAST,
        ],
    )
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "/no/such/folder"], "checkpoint /no/such/folder does not exist"),
        (["--input-source", "/no/such/file.txt"], "neither 'interactive' nor an existing file"),
        (["--backend", "tpu"], "unknown backend 'tpu'"),
        (["--dtype", "fp8"], "unknown dtype 'fp8'"),
        (["--top-p", "1.5"], "top_p must be in [0, 1]"),
        (["--tokenizer", "/no/such/ice_text.model"], "looked in: /no/such/ice_text.model"),
        (["--input-source", "TMP/a_file", "--output-path", "TMP/a_file"], "is a file; give a folder"),
        (["--input-source", "TMP/a_file", "--output-path", "TMP/a_file/sub"], "is a file, not a folder"),
        (["--input-source", "TMP/latin1.txt"], "is not UTF-8 text"),
        (["--input-source", "TMP/ids.tsv", "--with-id"], "cannot name an answer file"),
        (["--config", "TMP/bad.json"], "layernorm_epsilon must be a number"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, message, tmp_path):
    args = [a.replace("TMP", str(tmp_path)) for a in args]
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 [MASK]\n".encode("latin-1"))
    (tmp_path / "ids.tsv").write_text("../evil\thello [MASK]\n")
    (tmp_path / "bad.json").write_text(
        '{"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, '
        '"inner_hidden_size": 96, "vocab_size": 150528, "layernorm_epsilon": "x"}'
    )
    result = runner.invoke(app, ["run", *args], input="stop\n")
    assert result.exit_code == 1
    # handled by user_errors (typer.Exit -> SystemExit), not the error escaping with its traceback
    assert isinstance(result.exception, SystemExit) and result.exception.code == USER_ERROR_EXIT_CODE
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]


def test_the_console_script_reports_errors_without_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "glm_engine.cli.main", "run", "--checkpoint", "/no/such"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: checkpoint /no/such does not exist"


def test_wrong_flags_are_usage_errors():
    result = runner.invoke(app, ["run", "--no-such-flag"])
    assert result.exit_code == 2


def test_a_nul_byte_or_a_bad_line_loses_no_answer(tmp_path):
    """File names are made safe; a refused line is reported and the next ones are still answered (exit 1 at the end)."""
    queries = tmp_path / "queries.txt"
    queries.write_text("Hello\x00 [MASK] a/b:c\n" + "word " * 3000 + "\nThe sky is [MASK].\n", encoding="utf-8")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--input-source", str(queries), "--output-path", str(out), *FAST])
    assert result.exit_code == 1
    assert "text too long" in result.output and "1 of 3 queries were refused" in result.output
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2 and all("\x00" not in n and "/" not in n and ":" not in n for n in names)
    assert any(n.startswith("Hello [MASK] abc") for n in names)


def test_ids_that_repeat_or_cannot_name_a_file_are_refused_before_loading(tmp_path):
    cases = {
        "q1\tA [MASK]\nq1\tB [MASK]\n": "id 'q1' repeats line 1; ids must be unique",
        "a:b\tA [MASK]\n": "cannot name an answer file",
        "a\x01b\tA [MASK]\n": "cannot name an answer file",
        "x" * 300 + "\tA [MASK]\n": "is too long for a file name",
    }
    for text, message in cases.items():
        queries = tmp_path / "ids.tsv"
        queries.write_text(text, encoding="utf-8")
        result = runner.invoke(app, ["run", "--input-source", str(queries), "--with-id", *FAST])
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output


@pytest.mark.parametrize(("command", "model"), [("run", "glm-tiny"), ("chat", "chatglm3-tiny")])
def test_invalid_utf8_typed_at_the_prompt_is_reported_and_the_session_goes_on(command, model, tmp_path):
    stdin = b"\xff\xfe bad bytes\nHello [MASK]\nstop\n"
    args = [command, "--checkpoint", model, "--max-new-tokens" if command == "chat" else "--out-seq-length", "12"]
    if command == "run":
        args += ["--output-path", str(tmp_path)]
    result = runner.invoke(app, args, input=stdin)
    assert result.exit_code == 0, result.output
    assert "not valid UTF-8" in result.output and "Traceback" not in result.output
    assert result.output.count("Output: " if command == "run" else "ChatGLM3-6B：") == 1  # the next query answered


def test_run_writes_terminal_markup_only_to_a_terminal(monkeypatch):
    """Piped output is the plain answer (issue 18, item 9); FORCE_COLOR keeps the reference's underlining."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    piped = runner.invoke(app, ["run", *FAST], input="Hello [MASK] world\nstop\n")
    assert piped.exit_code == 0, piped.output
    assert "\x1b" not in piped.output and "Output: Hello" in piped.output
    monkeypatch.setenv("FORCE_COLOR", "1")
    forced = runner.invoke(app, ["run", *FAST], input="Hello [MASK] world\nstop\n")
    assert "\x1b[0;32m\x1b[4m" in forced.output
    answer = piped.output.split("Output: ", 1)[1].splitlines()[0]
    marked = forced.output.split("Output: ", 1)[1].splitlines()[0]
    plain = marked.replace("\x1b[0;32m", "").replace("\x1b[4m", "").replace("\x1b[0m", "")
    assert plain.replace(" ", "") == answer.replace(" ", "")
