"""Shared pieces of the table-driven bad-input tests (``test_bad_inputs_<command>.py``, issue 18): the files a
demanding new user hands the commands, the rows, and the one check every row passes.

A row is what the user typed (arguments, optional standard input), the exit code it must give and a fragment of the
one error line it must print: ``error: ...`` on stderr for a user error (exit 1), click's ``Error: ...`` for a wrong
flag (exit 2, docs/cli.md). Every row also asserts no traceback, no exception escaping the command, and exactly one
error line, the last thing on stderr when the command fails. Rows run in-process through typer's CliRunner (the
command's own code, without a new interpreter per row); the few that need a real process say so in their module.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from glm_engine.cli.main import app

RUNNER = CliRunner()
USAGE_ERROR = 2  # click's exit code for a wrong flag or value type
DEMO_MODEL = Path(__file__).resolve().parents[1] / "glm_engine" / "assets" / "demo_model"
GARBAGE = bytes(range(256)) * 8  # invalid UTF-8, JSON, YAML, protobuf and safetensors alike


def row(name: str, argv: list[str], fragment: str, exit_code: int = 1, stdin: str | bytes | None = None):
    """One table row, named ``name`` in the test ids."""
    return pytest.param(argv, stdin, exit_code, fragment, id=name)


def make_bad_files(root: Path) -> Path:
    """Every kind of wrong file and folder the tables name as ``{tmp}/NAME``."""
    (root / "a_file").write_text("x\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.txt").write_text("\n   \n\t\n")
    (root / "garbage.bin").write_bytes(GARBAGE)
    (root / "latin1.txt").write_bytes("caf\xe9 [MASK]\n".encode("latin-1"))
    (root / "q.txt").write_text("Hello [MASK]\n")
    (root / "truncated.json").write_text('{"num_layers": 2')
    (root / "list.json").write_text("[1, 2]")
    (root / "emptydir").mkdir()
    (root / "nonempty").mkdir()
    (root / "nonempty" / "f").write_text("x")
    (root / "tokdir").mkdir()
    (root / "tokdir" / "ice_text.model").write_bytes(GARBAGE)
    (root / "ids_notab.tsv").write_text("hello [MASK]\n")
    (root / "ids_dup.tsv").write_text("q1\tA [MASK]\nq1\tB [MASK]\n")
    (root / "ids_unsafe.tsv").write_text("../evil\tA [MASK]\n")
    # 245 bytes fit a 255-byte name with .txt, but not the hidden temporary the answer is written through
    (root / "ids_long.tsv").write_text("x" * 245 + "\tThe sky is [MASK].\n")
    histories = {
        "hist_object.json": {"a": 1},
        "hist_pairs.json": [[1, 2]],
        "hist_role.json": [{"role": "wizard", "content": "x"}],
        "hist_surrogate.json": [{"role": "user", "content": "\ud800"}, {"role": "assistant", "content": "x"}],
    }
    for name, value in histories.items():
        (root / name).write_text(json.dumps(value))  # \ud800 is written as JSON's escape, as a broken tool would
    (root / "data").mkdir()
    (root / "data" / "x.jsonl").write_text('{"inputs_pretokenized": "a [MASK]", "choices_pretokenized": ["b", "c"]}\n')
    (root / "gdata").mkdir()
    (root / "gdata" / "g.jsonl").write_text(
        '{"inputs_pretokenized": "The sky is [MASK].", "targets_pretokenized": ["blue"]}\n'
    )
    tasks = {
        "good.yaml": "name: x\ntype: mul\npath: data\n",
        "bad_syntax.yaml": "name: [unclosed\n",
        "list.yaml": "- 1\n- 2\n",
        "bad_type.yaml": "name: x\ntype: nope\npath: data\n",
        "unknown_key.yaml": "name: x\ntype: mul\npath: data\nbatch_size: 4\n",
        "missing_data.yaml": "name: x\ntype: mul\npath: missing\n",
        "beams.yaml": "name: g\ntype: gen\npath: gdata\nsampling_strategy: BeamSearchStrategy\nnum_beams: 100000\n",
        "nan_penalty.yaml": "name: g\ntype: gen\npath: gdata\nsampling_strategy: BeamSearchStrategy\n"
        "length_penalty: .nan\n",
        "zero_gen.yaml": "name: g\ntype: gen\npath: gdata\nmax_gen_length: 0\n",
        "empty.yaml": "",
    }
    for name, text in tasks.items():
        (root / name).write_text(text)
    (root / "garbage.yaml").write_bytes(GARBAGE)
    return root


def unwritable_folder(root: Path) -> Path | None:
    """A folder no file can be created in: a read-only one under ``root``, or for root (whom permission bits do not
    stop) /sys, which refuses everyone; None where neither holds."""
    if os.geteuid() != 0:
        locked = root / "locked"
        locked.mkdir(exist_ok=True)
        locked.chmod(0o555)
        return locked
    try:
        with tempfile.TemporaryFile(dir="/sys"):
            return None
    except OSError:
        return Path("/sys")


def expand(argv: list[str], tmp: Path) -> list[str]:
    """``{tmp}``, ``{demo}`` and ``{unwritable}`` filled in (a row that needs an unwritable folder skips without)."""
    out = []
    for arg in argv:
        if "{unwritable}" in arg:
            locked = unwritable_folder(tmp)
            if locked is None:
                pytest.skip("no folder here refuses new files")
            arg = arg.replace("{unwritable}", str(locked))
        out.append(arg.replace("{tmp}", str(tmp)).replace("{demo}", str(DEMO_MODEL)))
    return out


def invoke(argv: list[str], stdin: str | bytes | None = None) -> Result:
    return RUNNER.invoke(app, argv, input=stdin)


def assert_clean_failure(result: Result, exit_code: int, fragment: str) -> None:
    """The row's exit code, no traceback or escaped exception, and exactly one error line holding ``fragment``."""
    output = result.output + result.stderr
    assert result.exit_code == exit_code, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output, output
    prefix = "Error: " if exit_code == USAGE_ERROR else "error: "
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(prefix)]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0], errors[0]
    if exit_code != 0:
        assert lines[-1] == errors[0], result.stderr  # the error ends the command: nothing after it
