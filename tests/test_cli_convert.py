"""``glm-engine convert-tp`` and ``glm-engine convert`` from the command line: outputs, messages, exit codes."""

from __future__ import annotations

import torch
from reference_tp import reference_shards
from test_convert import read_shards, write_reference_sat
from typer.testing import CliRunner

from glm_engine.checkpoint import open_checkpoint
from glm_engine.cli.main import app
from glm_engine.model.glm130b.weights import random_state_dict

runner = CliRunner()


def test_convert_tp_then_convert_to_native_and_back(tmp_path, small_config):
    full = random_state_dict(small_config, seed=3, dtype=torch.float16)
    write_reference_sat(tmp_path / "tp4", reference_shards(full, 4), small_config)
    args = ["convert-tp", "--input-folder", str(tmp_path / "tp4"), "--output-folder", str(tmp_path / "tp2")]
    result = runner.invoke(app, [*args, "--target-tp", "2", "--quantization-bit-width", "8"])
    assert result.exit_code == 0, result.output
    assert "TP=2, INT8 rowwise weights): 2 files" in result.output
    assert open_checkpoint(tmp_path / "tp2").bits == 8

    result = runner.invoke(app, ["convert", "--input", str(tmp_path / "tp4"), "--output", str(tmp_path / "n")])
    assert result.exit_code == 0, result.output
    assert "native checkpoint" in result.output
    result = runner.invoke(
        app, ["convert", "--input", str(tmp_path / "n"), "--output", str(tmp_path / "s"), "--to", "sat", "--tp", "2"]
    )
    assert result.exit_code == 0, result.output
    for got, expected in zip(read_shards(tmp_path / "s", "release"), reference_shards(full, 2)):
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_bad_requests_are_one_line_errors(tmp_path, small_config):
    full = random_state_dict(small_config, seed=3, dtype=torch.float16)
    write_reference_sat(tmp_path / "tp4", reference_shards(full, 4), small_config)
    base = ["convert-tp", "--input-folder", str(tmp_path / "tp4"), "--output-folder", str(tmp_path / "o")]
    for extra, message in (
        (["--target-tp", "3"], "valid degrees: 1, 2, 4"),
        (["--quantization-bit-width", "5"], "must be 4 or 8"),
    ):
        result = runner.invoke(app, base + extra)
        assert result.exit_code == 1 and message in result.output, result.output
    result = runner.invoke(app, ["convert", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 1 and "does not exist" in result.output
    assert not (tmp_path / "o").exists()


def test_leftovers_of_an_interrupted_conversion_are_removed_with_a_note(tmp_path, small_config, caplog):
    full = random_state_dict(small_config, seed=3, dtype=torch.float16)
    write_reference_sat(tmp_path / "tp4", reference_shards(full, 4), small_config)
    (tmp_path / ".out.partial-12345").mkdir()
    args = ["convert-tp", "--input-folder", str(tmp_path / "tp4"), "--output-folder", str(tmp_path / "out")]
    result = runner.invoke(app, [*args, "--target-tp", "1"])
    assert result.exit_code == 0, result.output
    assert ".out.partial-12345, left by an interrupted run" in caplog.text
    assert not (tmp_path / ".out.partial-12345").exists()
