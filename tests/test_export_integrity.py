"""A damaged exported folder (issue 18, item 4): the sizes and checksums ``genai_config.json`` records are checked
before onnxruntime (or TensorRT) opens the folder, so a truncated, changed or missing file is one typed error naming
it, through ``load`` and the CLI; ONNX Runtime's own load failures become one line naming the folder; folders from
before the ``files`` section still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'glm-engine[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'glm-engine[onnx]')")

from typer.testing import CliRunner  # noqa: E402

from glm_engine.backends.tensorrt.build import build_engine  # noqa: E402
from glm_engine.backends.tensorrt.plan import Limits, engine_metadata  # noqa: E402
from glm_engine.backends.tensorrt.runner import TrtRunner  # noqa: E402
from glm_engine.cli.main import app  # noqa: E402
from glm_engine.engine import DEFAULT_MODEL, load  # noqa: E402
from glm_engine.errors import BackendError, CheckpointError, InputError  # noqa: E402
from glm_engine.export.onnx_export import export_onnx  # noqa: E402
from glm_engine.exported import (  # noqa: E402
    DATA_FILE,
    ENGINE_FILE,
    FILES_SECTION,
    GENAI_CONFIG_FILE,
    MODEL_FILE,
    TENSORRT_SECTION,
    TOKENIZER_FILE,
    check_files,
    file_records,
    file_sha256,
    read_exported,
)
from glm_engine.exported import files as files_module  # noqa: E402

cli = CliRunner()
PROMPT = "Hello [MASK] world"


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export for the module; tests damage copies of it."""
    folder = tmp_path_factory.mktemp("integrity") / "demo"
    export_onnx(DEFAULT_MODEL, folder, max_seq=32)
    return folder


def copy_of(export: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(export, tmp_path / "copy"))


def truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def flip_byte(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 3)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))


def append_byte(path: Path) -> None:
    with open(path, "ab") as handle:
        handle.write(b"\0")


# (file, damage, what the message says about it)
DAMAGE = [
    (MODEL_FILE, truncate, "bytes where the export wrote"),
    (DATA_FILE, truncate, "bytes where the export wrote"),
    (DATA_FILE, append_byte, "(damaged)"),
    (MODEL_FILE, flip_byte, "has sha256"),
    (DATA_FILE, flip_byte, "has sha256"),
    (TOKENIZER_FILE, flip_byte, "has sha256"),
    (DATA_FILE, Path.unlink, "is missing"),
    (TOKENIZER_FILE, Path.unlink, "is missing"),
]
DAMAGE_IDS = [f"{damage.__name__}-{name}" for name, damage, _ in DAMAGE]


def run_cli(folder: Path, tmp_path: Path):
    queries = tmp_path / "q.txt"
    queries.write_text(PROMPT + "\n", encoding="utf-8")
    args = ["run", "--backend", "onnxruntime", "--checkpoint", str(folder), "--input-source", str(queries)]
    return cli.invoke(app, [*args, "--output-path", str(tmp_path / "answers"), "--out-seq-length", "16"])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("name", "damage", "says"), DAMAGE, ids=DAMAGE_IDS)
def test_a_damaged_file_is_named_before_onnxruntime_opens_the_folder(export, tmp_path, name, damage, says):
    folder = copy_of(export, tmp_path)
    damage(folder / name)
    with pytest.raises(CheckpointError, match="re-create it with `glm-engine export onnx`") as caught:
        load(folder, backend="onnxruntime")
    message = str(caught.value)
    assert str(folder / name) in message and says in message and "\n" not in message
    assert_one_line_error(run_cli(folder, tmp_path), str(folder / name), says)


def test_a_truncated_file_says_how_many_bytes_it_has_and_should_have(export, tmp_path):
    folder = copy_of(export, tmp_path)
    recorded = read_exported(folder).description[FILES_SECTION][DATA_FILE]["bytes"]
    truncate(folder / DATA_FILE)
    expected = rf"has {recorded // 2} bytes where the export wrote {recorded} \(truncated\)"
    with pytest.raises(CheckpointError, match=expected):
        load(folder, backend="onnxruntime")


def test_the_files_section_lists_every_file_with_its_size_and_sha256(export):
    files = read_exported(export).description[FILES_SECTION]
    assert set(files) == {MODEL_FILE, DATA_FILE, TOKENIZER_FILE}  # genai_config.json itself is not listed
    for name, record in files.items():
        assert record == {"bytes": (export / name).stat().st_size, "sha256": file_sha256(export / name)}
    weights = read_exported(export).description["weights"]  # hashed while written: the data file's checksum
    assert weights == files[DATA_FILE]


def test_an_intact_export_loads_and_answers_as_the_cpu_backend(export, tmp_path):
    folder = copy_of(export, tmp_path)  # a copied folder is still intact: nothing is tied to its path
    answers = {}
    for backend, source in (("onnxruntime", folder), ("cpu", DEFAULT_MODEL)):
        engine = load(source, backend=backend)
        answers[backend] = engine.generate([PROMPT], out_seq_length=16, seed=1)[0].answers
    assert answers["onnxruntime"] == answers["cpu"]
    result = run_cli(folder, tmp_path)
    assert result.exit_code == 0, result.output


def without_files_section(folder: Path) -> None:
    path = folder / GENAI_CONFIG_FILE
    description = json.loads(path.read_text(encoding="utf-8"))
    del description[FILES_SECTION]
    path.write_text(json.dumps(description), encoding="utf-8")


def test_a_folder_exported_before_the_files_section_loads_with_a_note(export, tmp_path):
    folder = copy_of(export, tmp_path)
    without_files_section(folder)
    engine = load(folder, backend="onnxruntime")
    assert any("were not checked" in note for note in engine.notes)
    assert not any("not checked" in note for note in load(export, backend="onnxruntime").notes)


@pytest.mark.parametrize("name", [MODEL_FILE, DATA_FILE])
def test_onnxruntimes_own_load_failure_is_one_line_naming_the_folder(export, tmp_path, name):
    """Without a files section nothing is checked first: ORT fails, and its error becomes a BackendError."""
    folder = copy_of(export, tmp_path)
    without_files_section(folder)
    truncate(folder / name)
    with pytest.raises(BackendError, match="could not open") as caught:
        load(folder, backend="onnxruntime")
    message = str(caught.value)
    assert str(folder) in message and "were not checked" in message and "\n" not in message
    assert_one_line_error(run_cli(folder, tmp_path), f"could not open {folder}")


def test_a_malformed_files_section_is_a_checkpoint_error(export, tmp_path):
    folder = copy_of(export, tmp_path)
    path = folder / GENAI_CONFIG_FILE
    description = json.loads(path.read_text(encoding="utf-8"))
    description[FILES_SECTION] = {"../" + MODEL_FILE: description[FILES_SECTION][MODEL_FILE]}
    path.write_text(json.dumps(description), encoding="utf-8")
    with pytest.raises(CheckpointError, match="malformed entry"):
        load(folder, backend="onnxruntime")


@pytest.fixture
def large_files(monkeypatch, tmp_path):
    """Every file counts as large (hashed once, then stamped) and stamps go to a temporary folder."""
    monkeypatch.setattr(files_module, "ALWAYS_HASHED_BYTES", 0)
    monkeypatch.setattr(files_module, "STAMP_DIR", tmp_path / "stamps")
    hashed = []
    real = files_module.file_sha256
    monkeypatch.setattr(files_module, "file_sha256", lambda path: (hashed.append(path.name), real(path))[1])
    return hashed


def test_large_files_are_hashed_once_until_they_change(export, tmp_path, large_files):
    folder = copy_of(export, tmp_path)
    description = read_exported(folder).description
    check_files(folder, description)
    assert sorted(large_files) == sorted(description[FILES_SECTION])
    large_files.clear()
    check_files(folder, description)
    assert large_files == []  # stamped: only sizes were checked
    flip_byte(folder / DATA_FILE)  # a write changes the file's mtime and ctime: hashed again
    with pytest.raises(CheckpointError, match=f"{DATA_FILE} has sha256"):
        check_files(folder, description)
    assert large_files == [DATA_FILE]


def test_the_policy_variable_hashes_always_or_only_small_files(export, tmp_path, large_files, monkeypatch):
    folder = copy_of(export, tmp_path)
    description = read_exported(folder).description
    monkeypatch.setenv("GLM_ENGINE_VERIFY_FILES", "always")
    check_files(folder, description)
    check_files(folder, description)
    assert len(large_files) == 2 * len(description[FILES_SECTION]) and not (tmp_path / "stamps").exists()
    monkeypatch.setenv("GLM_ENGINE_VERIFY_FILES", "sizes")
    flip_byte(folder / DATA_FILE)
    check_files(folder, description)  # a flipped byte in a large file goes unseen under "sizes"
    truncate(folder / DATA_FILE)
    with pytest.raises(CheckpointError, match="truncated"):
        check_files(folder, description)
    monkeypatch.setenv("GLM_ENGINE_VERIFY_FILES", "never")
    with pytest.raises(InputError, match="GLM_ENGINE_VERIFY_FILES='never' is not a policy; use one of once"):
        check_files(folder, description)


def test_a_damaged_onnx_folder_is_named_before_a_tensorrt_build(export, tmp_path):
    folder = copy_of(export, tmp_path)
    truncate(folder / DATA_FILE)
    with pytest.raises(CheckpointError, match=f"{DATA_FILE} has .* bytes"):  # before TensorRT is looked for
        build_engine(folder, tmp_path / "engine", Limits(1, 32, 8), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "engine").exists()


def fake_engine_folder(export: Path, folder: Path) -> Path:
    """What ``build_engine`` writes (an engine, the tokenizer, the description with its own files section), with
    placeholder engine bytes: enough to check the files before TensorRT reads them."""
    folder.mkdir()
    (folder / ENGINE_FILE).write_bytes(b"engine" * 1000)
    shutil.copyfile(export / TOKENIZER_FILE, folder / TOKENIZER_FILE)
    metadata = engine_metadata(read_exported(export).description, "key", [], Limits(1, 32, 8))
    assert FILES_SECTION not in metadata  # the ONNX folder's files are not the engine folder's
    metadata[FILES_SECTION] = file_records(folder, [ENGINE_FILE, TOKENIZER_FILE])
    (folder / GENAI_CONFIG_FILE).write_text(json.dumps(metadata), encoding="utf-8")
    return folder


def test_a_truncated_engine_is_named_before_tensorrt_reads_it(export, tmp_path):
    folder = fake_engine_folder(export, tmp_path / "engine")
    assert read_exported(folder).description[TENSORRT_SECTION]["cache_key"] == "key"
    truncate(folder / ENGINE_FILE)
    with pytest.raises(CheckpointError, match=f"{ENGINE_FILE} has 3000 bytes .*`glm-engine export tensorrt`"):
        TrtRunner(folder)
