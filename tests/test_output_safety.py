"""Writing conversions safely: an output that is a file, another run writing the same folder, what interrupted runs
left, and running out of space (a real small file system where one can be mounted, and ``ulimit -f``)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid

import pytest
import torch

from glm_engine.checkpoint import atomic, convert, native, space
from glm_engine.checkpoint.convert import convert_to_native, convert_tp
from glm_engine.checkpoint.staging import STAGING_TAG, this_host
from glm_engine.errors import OutputError
from glm_engine.model.glm130b.weights import random_state_dict

DEMO = "glm_engine/assets/demo_model"


@pytest.fixture
def source(tmp_path, small_config):
    native.save_native(tmp_path / "src", small_config, random_state_dict(small_config, seed=5, dtype=torch.float16))
    return tmp_path / "src"


@pytest.fixture
def other_process():
    """A live process that is not this one (its pid names a staging folder of 'another run')."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def test_an_output_that_is_a_file_is_named_as_such(tmp_path, source):
    (tmp_path / "empty").touch()
    with pytest.raises(OutputError, match="is a file, not a folder"):
        convert_to_native(source, tmp_path / "empty")


def test_another_live_run_writing_the_folder_is_refused_and_left_alone(tmp_path, source, other_process):
    busy = tmp_path / f".out{STAGING_TAG}{other_process}@{this_host()}"
    busy.mkdir()
    with pytest.raises(OutputError, match=f"being written by another run \\(process {other_process}, into"):
        convert_tp(source, tmp_path / "out", 1)
    assert busy.exists() and not (tmp_path / "out").exists()


def test_a_staging_folder_from_another_host_is_assumed_live(tmp_path, source):
    (tmp_path / f".out{STAGING_TAG}4242@other-node").mkdir()
    with pytest.raises(OutputError, match=r"process 4242 on other-node.*if no such run exists, remove"):
        convert_to_native(source, tmp_path / "out")


def test_leftovers_of_dead_runs_are_removed_beside_and_inside_the_output(tmp_path, source, caplog):
    dead = _dead_pid()
    beside = tmp_path / f".out{STAGING_TAG}{dead}@{this_host()}"
    (beside / "release").mkdir(parents=True)
    (beside / "release" / "big.pt").write_bytes(b"x" * 4096)
    (tmp_path / "mount").mkdir()  # an empty folder (a mount point): its staging folder is made inside it
    inside = tmp_path / "mount" / f"{STAGING_TAG}{dead}"  # the name before hosts were recorded
    inside.mkdir()
    convert_tp(source, tmp_path / "out", 1)
    convert_tp(source, tmp_path / "mount", 1)
    assert not beside.exists() and not inside.exists()
    assert (tmp_path / "out" / "latest").exists() and (tmp_path / "mount" / "latest").exists()
    assert caplog.text.count("left by an interrupted run") == 2


def test_a_run_that_lands_first_wins_and_the_other_says_so(tmp_path, source, monkeypatch):
    write = native.write_native

    def write_then_race(folder, *args, **kwargs):
        paths = write(folder, *args, **kwargs)
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "theirs").write_text("the other run's output")
        return paths

    monkeypatch.setattr(native, "write_native", write_then_race)
    with pytest.raises(OutputError, match=r"another run wrote .* while this one was writing"):
        convert_to_native(source, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["theirs"]
    assert not [p for p in tmp_path.iterdir() if STAGING_TAG in p.name]


def test_too_little_free_space_is_refused_before_writing(tmp_path, source, monkeypatch):
    monkeypatch.setattr(space, "free_bytes", lambda path: 1000)
    with pytest.raises(OutputError, match=r"needs about .* KiB but the file system of .* has 1000 B free"):
        convert_to_native(source, tmp_path / "out", quant=None)
    assert list(tmp_path.iterdir()) == [source]


@pytest.mark.parametrize("to", ["native", "sat"])
def test_a_file_size_limit_is_one_line_naming_the_file(tmp_path, to):
    """``ulimit -f``: safetensors says 'File too large', torch.save a later zip assertion; both become one line."""
    limit_blocks = 2048  # 2 MiB; the demo model's one weights file is about 5 MiB
    command = f"ulimit -f {limit_blocks}; exec {sys.executable} -m glm_engine.cli convert --input {DEMO} "
    command += f"--output {tmp_path / 'out'} --to {to}"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "could not write" in lines[0] and "over the largest file this process may write (2.0 MiB" in lines[0]
    assert ("model-00001.safetensors" if to == "native" else "mp_rank_00_model_states.pt") in lines[0]
    assert list(tmp_path.iterdir()) == []


@contextlib.contextmanager
def small_file_system(path, size):
    """A tmpfs of ``size`` mounted at ``path`` (skips where this process may not mount)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip() or 'not permitted'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


@pytest.mark.skipif(sys.platform != "linux", reason="mounts a tmpfs (Linux)")
def test_a_full_disk_midway_is_one_line_naming_the_file(tmp_path, source, monkeypatch):
    """The up-front estimate can be beaten by another writer: the write itself then fails with ENOSPC."""
    monkeypatch.setattr(convert, "check_space", lambda *args: None)
    with small_file_system(tmp_path / "small", "64k") as small:
        with pytest.raises(OutputError, match=r"could not write .*model.*: no space left on its file system"):
            convert_to_native(source, small / "out")
        assert list(small.iterdir()) == []


def test_space_error_recognises_the_libraries_wordings(tmp_path):
    assert space.space_error(OSError(28, "No space left on device"), tmp_path / "f", 10) is not None
    assert space.space_error(OSError(13, "Permission denied"), tmp_path / "f", 10) is None
    assert space.space_error(RuntimeError("Error while serializing: File too large"), tmp_path / "f", None)
    assert space.space_error(RuntimeError("unrelated"), tmp_path / "f", 10) is None


def test_atomic_files_keep_their_space_error_type_through_write_atomically(tmp_path):
    def fill(tmp):
        tmp.write_bytes(b"x")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="no space left"):
        atomic.write_atomically(tmp_path / "f", fill, needed=10)
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    """A pid no process has (a finished child's)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, 0)
        return int(uuid.uuid4().int % 2**22) + 2**22  # reused at once: take one above the default pid_max
    return process.pid


@pytest.mark.skipif(sys.platform != "linux", reason="mounts a tmpfs (Linux)")
def test_an_export_that_runs_out_of_space_is_one_line_and_leaves_nothing(tmp_path):
    """The ONNX writer streams its data file itself: the staged folder turns its ENOSPC into the same one line."""
    with small_file_system(tmp_path / "small", "3m") as small:
        command = [sys.executable, "-m", "glm_engine.cli", "export", "onnx", "--output", str(small / "x")]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert "could not write" in lines[0] and "no space left on its file system" in lines[0]
        assert list(small.iterdir()) == []
