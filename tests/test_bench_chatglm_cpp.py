"""``glm-engine bench --compare-chatglm-cpp``: where chatglm.cpp is found, which converter and tokenizer file a folder
needs, why a comparison is skipped, the points and ratios per width, and what the worker hands chatglm.cpp. A fake
``chatglm_cpp`` package written here stands in for the real one (which is built outside the project): it logs what its
converter and model are given, so the shaping is checked exactly; nothing here is timed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from glm_engine.bench.chatglm_cpp import (
    BATCH_ONE,
    ENGINE,
    add_chatglm_cpp_ratios,
    converter_config,
    converter_for,
    ggml_points,
    locate,
    plan_chatglm_cpp,
    width_of,
)
from glm_engine.bench.models import resolve_model
from glm_engine.bench.report import ReportFormat, render_report
from glm_engine.bench.rows import OK, SKIPPED, Row
from glm_engine.bench.spec import Kind, Point, QuantChoice, TestSpec
from glm_engine.bench.workload import build_workload
from glm_engine.cli.main import app
from glm_engine.model.chatglm2.family import ChatGLM2Family
from glm_engine.model.glm4_hf.family import GlmHFFamily
from tests.glm4_reference import make_native_folder, make_remote_folder

TG2, PP4 = TestSpec(Kind.GENERATE, 0, 2), TestSpec(Kind.PREFILL, 4, 0)


@pytest.fixture(autouse=True)
def no_chat_tokenizer(monkeypatch):
    """bench never tokenizes; the folders here carry only the file chatglm.cpp's converter stores."""

    def stub(self, config, path, folder, random):
        return SimpleNamespace(vocab_size=config.vocab_size, eos_id=(*config.eos_token_ids, 0)[0])

    monkeypatch.setattr(ChatGLM2Family, "load_tokenizer", stub)
    monkeypatch.setattr(GlmHFFamily, "load_tokenizer", stub)


FAKE_INIT = '''"""A stand-in for chatglm.cpp's package: logs what it is asked to load and run."""
import json
import os

from . import _C  # noqa: F401

__version__ = "0.0-fake"


def _log(record):
    with open(os.environ["FAKE_GGML_LOG"], "a") as out:
        out.write(json.dumps(record) + "\\n")


class _Model:
    def __init__(self, path):
        self.path = path

    def _next(self, ids, n_past, n_ctx):
        _log({"call": os.path.basename(self.path), "ids": list(ids), "n_past": n_past, "n_ctx": n_ctx})
        return 7


class _Model041(_Model):
    def generate_next_token(self, input_ids, gen_config, n_past, n_ctx):
        return self._next(input_ids, n_past, n_ctx)


class _Model042(_Model):
    def generate_next_token(self, input_ids, image, gen_config, n_past, n_ctx):
        assert image is None
        return self._next(input_ids, n_past, n_ctx)


class Pipeline:
    def __init__(self, model_path, *, max_length=None, dtype=None):
        with open(model_path) as handle:
            _log({"load": json.load(handle), "max_length": max_length})
        image = os.environ.get("FAKE_GGML_IMAGE_ARGUMENT") == "1"
        self.model = (_Model042 if image else _Model041)(model_path)
'''

FAKE_C = """class GenerationConfig:
    def __init__(self, max_length=2048, max_new_tokens=-1, max_context_length=512, do_sample=True):
        self.max_length, self.max_new_tokens = max_length, max_new_tokens
"""

FAKE_CONVERT = '''"""The converter's interface: GGMLType, and each release's class with its convert()."""
import enum
import hashlib
import json
from pathlib import Path


class GGMLType(enum.Enum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q8_0 = 8


class _Converter:
    @classmethod
    def convert(cls, f, model, tokenizer, ggml_type):
        state = model.state_dict()
        record = {
            "converter": cls.__name__,
            "type": ggml_type.name,
            "eos_token_id": model.config.eos_token_id,
            "multi_query_group_num": getattr(model.config, "multi_query_group_num", None),
            "original_rope": getattr(model.config, "original_rope", None),
            "names": sorted(state),
            "tokenizer_sha": hashlib.sha256(cls.tokenizer_bytes(tokenizer)).hexdigest(),
        }
        f.write(json.dumps(record).encode())


class ChatGLMConverter(_Converter):
    @staticmethod
    def tokenizer_bytes(tokenizer):
        return tokenizer.sp_tokenizer.text_tokenizer.sp.serialized_model_proto()


class ChatGLM2Converter(_Converter):
    @staticmethod
    def tokenizer_bytes(tokenizer):
        return tokenizer.tokenizer.sp_model.serialized_model_proto()


class ChatGLM3Converter(ChatGLM2Converter):
    pass


class ChatGLM4Converter(_Converter):
    @staticmethod
    def tokenizer_bytes(tokenizer):
        return Path(tokenizer.vocab_file).read_bytes()
'''


@pytest.fixture
def fake_package(tmp_path, monkeypatch) -> Path:
    """A folder holding a fake ``chatglm_cpp`` package; its log is ``FAKE_GGML_LOG``."""
    root = tmp_path / "site"
    package = root / "chatglm_cpp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_INIT)
    (package / "_C.py").write_text(FAKE_C)
    (package / "convert.py").write_text(FAKE_CONVERT)
    monkeypatch.setenv("FAKE_GGML_LOG", str(tmp_path / "ggml.log"))
    return root


def _log(tmp_path: Path) -> list[dict]:
    path = tmp_path / "ggml.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _glm4_folder(tmp_path: Path, tokenizer: bool = True) -> Path:
    native = make_native_folder(tmp_path / "native", "glm")
    folder = make_remote_folder(native, tmp_path / "glm4", "glm4")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "eos_token_id": [1, 2]}))
    if tokenizer:
        (folder / "tokenizer.model").write_text("IQ== 0\nIg== 1\n")  # tiktoken's format: base64 token, rank
    return folder


# --- where chatglm.cpp is and what it can convert ----------------------------------------------------------------


def test_the_path_is_a_package_folder_or_an_interpreter_and_anything_else_says_what_to_pass(tmp_path, fake_package):
    assert locate(fake_package, None) == (sys.executable, fake_package, "")
    assert locate(fake_package / "chatglm_cpp", "/py") == ("/py", fake_package, "")  # the package itself is found
    assert locate(Path(sys.executable), None) == (sys.executable, None, "")
    assert "does not exist" in locate(tmp_path / "absent", None)[2]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no chatglm_cpp package" in locate(empty, None)[2]
    text = tmp_path / "notes.txt"
    text.write_text("")
    assert "neither a folder holding chatglm_cpp/ nor an executable" in locate(text, None)[2]


def test_each_release_gets_its_converter_and_tokenizer_file_and_other_models_say_why_not(tmp_path):
    glm4 = resolve_model(str(_glm4_folder(tmp_path)))
    assert converter_for(glm4) == ("ChatGLM4Converter", tmp_path / "glm4" / "tokenizer.model", "")
    chatglm3 = make_remote_folder(tmp_path / "native", tmp_path / "chatglm3", "chatglm3")
    assert "ChatGLM3Converter reads tokenizer.model, which" in converter_for(resolve_model(str(chatglm3)))[2]
    native = converter_for(resolve_model(str(tmp_path / "native")))
    assert "compare the same weights in the remote-code layout" in native[2]
    random = converter_for(resolve_model("random:chatglm3-tiny"))
    assert "exists only in this process" in random[2]


def test_the_converter_reads_the_folders_config_with_the_references_defaults_and_one_end_id(tmp_path):
    folder = _glm4_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config.pop("rope_ratio", None)  # as THUDM/chatglm2-6b's config.json leaves it out
    (folder / "config.json").write_text(json.dumps(config))
    data = converter_config(resolve_model(str(folder)), folder)
    assert data["rope_ratio"] == 1  # configuration_chatglm.py's default, which the converter reads
    assert data["eos_token_id"] == 1  # the first of [1, 2]: the tokenizer's end id the converter stores
    assert data["original_rope"] is True and data["pre_seq_len"] is None  # configuration_chatglm.py's defaults
    assert data["multi_query_group_num"] == 2 and data["kv_channels"] == 16  # the folder's own values
    assert data["rmsnorm"] is True and data["add_bias_linear"] is False


def test_a_plan_that_cannot_import_chatglm_cpp_quotes_the_error(tmp_path, fake_package):
    (fake_package / "chatglm_cpp" / "_C.py").unlink()
    plan = plan_chatglm_cpp(resolve_model(str(_glm4_folder(tmp_path))), fake_package)
    assert "cannot import chatglm.cpp" in plan.skipped and "_C" in plan.skipped and "pip install" in plan.skipped


# --- points and ratios ----------------------------------------------------------------------------------------------


def test_each_width_of_our_cpu_rows_at_tp1_gets_one_chatglm_cpp_point():
    points = [
        Point("cpu", dtype, quant, tp, batch, 0, TG2)
        for dtype in ("fp32", "bf16")
        for quant in (QuantChoice(), QuantChoice(8), QuantChoice(4, 32), QuantChoice(4, None, True))
        for tp in (1, 2)
        for batch in (1, 2)
    ]
    got = [(g.ggml_type, g.point.batch) for g in ggml_points(points)]
    assert got == [("f16", 1), ("f16", 2), ("q8_0", 1), ("q8_0", 2), ("q4_0", 1), ("q4_0", 2)]
    assert {g.point.backend for g in ggml_points(points)} == {ENGINE}
    assert ggml_points([Point("cpu", "fp32", QuantChoice(), 2, 1, 0, TG2)]) == []  # no TP=1 row, nothing to compare


def _row(engine: str, quant: str, rate: float, test: str = "tg2", dtype: str = "bf16", batch: int = 1) -> Row:
    return Row(engine, dtype, quant, 1, batch, test, 0, device="AMD EPYC", tokens_per_s=rate, tokens_per_s_std=0.0)


def test_ratios_compare_rows_of_the_same_width_test_and_device():
    rows = [
        _row("cpu", "none", 6.0),
        _row("cpu", "none", 3.0, dtype="fp32"),
        _row("cpu", "int8-rowwise", 9.0),
        _row("cpu", "int4-g32+out", 16.0),
        _row("cpu", "int4-rowwise", 10.0, test="pp4"),
        _row(ENGINE, "f16", 4.0, dtype="fp32"),
        _row(ENGINE, "q8_0", 12.0, dtype="fp32"),
        _row(ENGINE, "q4_0", 8.0, dtype="fp32"),
    ]
    add_chatglm_cpp_ratios(rows)
    assert [r.vs_chatglm_cpp for r in rows] == [1.5, 0.75, 0.75, 2.0, None, None, None, None]
    assert [width_of(q) for q in ("none", "int8-g128", "int4-rowwise+out")] == ["f16", "q8_0", "q4_0"]


def test_the_report_puts_each_chatglm_cpp_type_beside_our_rows_of_its_width():
    rows = [_row("cpu", "none", 6.0), _row("cpu", "int8-rowwise", 9.0), _row(ENGINE, "f16", 4.0, dtype="fp32")]
    rows.append(Row(ENGINE, "fp32", "q8_0", 1, 1, "tg2", 0, SKIPPED, "converter refused it", "AMD EPYC"))
    add_chatglm_cpp_ratios(rows)
    meta = {
        "model": {"description": "a folder"},
        "devices": [],
        "protocol": {"repetitions": 1, "warmup": 0},
        "chatglm_cpp": "chatglm.cpp 0.4.1 (/somewhere)",
    }
    text = render_report(meta, rows, ReportFormat.md, "cpu", "transformers")
    assert "- chatglm.cpp 0.4.1 (/somewhere): the same folder converted by its own converter" in text
    assert "## Against chatglm.cpp" in text and "## Side by side" not in text  # one engine of ours: no side by side
    assert "| f16 | 1 | tg2 @ d0 | 4.00 ± 0.00 | cpu bf16 none: 6.00 (1.50x) |" in text
    assert "| q8_0 | 1 | tg2 @ d0 | skipped: converter refused it | cpu bf16 int8-rowwise: 9.00 |" in text
    header = next(line for line in text.splitlines() if line.startswith("| engine |"))
    assert header.endswith("| vs transformers | vs chatglm.cpp | note |")


# --- the worker, end to end with the fake package -------------------------------------------------------------------


def _bench(folder: Path, package: Path, *extra: str) -> dict:
    args = ["bench", "--model", str(folder), "--compare-chatglm-cpp", str(package), "--no-baseline", "-r", "1"]
    result = CliRunner().invoke(app, [*args, "--warmup", "0", "--bandwidth-gib", "0", "-o", "json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_worker_converts_the_folder_per_width_and_feeds_chatglm_cpp_our_ids(tmp_path, fake_package, monkeypatch):
    monkeypatch.setenv("FAKE_GGML_IMAGE_ARGUMENT", "1")  # 0.4.2's generate_next_token takes an image argument
    folder = _glm4_folder(tmp_path)
    report = _bench(folder, fake_package, "--quant", "none,int8,int4", "-t", "pg3,2")
    assert report["chatglm_cpp"].startswith("chatglm.cpp 0.0-fake")
    cpp = [r for r in report["rows"] if r["engine"] == ENGINE]
    assert [(r["quant"], r["status"]) for r in cpp] == [("f16", OK), ("q8_0", OK), ("q4_0", OK)]
    ours = [r for r in report["rows"] if r["engine"] == "cpu"]
    ratios = [pytest.approx(o["tokens_per_s"] / c["tokens_per_s"]) for o, c in zip(ours, cpp, strict=True)]
    assert [r["vs_chatglm_cpp"] for r in ours] == ratios
    log = _log(tmp_path)
    loads = [entry for entry in log if "load" in entry]
    assert [entry["load"]["type"] for entry in loads] == ["F16", "Q8_0", "Q4_0"]
    expected_sha = __import__("hashlib").sha256((folder / "tokenizer.model").read_bytes()).hexdigest()
    for entry in loads:
        assert entry["load"]["converter"] == "ChatGLM4Converter" and entry["load"]["eos_token_id"] == 1
        assert entry["load"]["tokenizer_sha"] == expected_sha
        assert "transformer.output_layer.weight" in entry["load"]["names"]
        assert entry["max_length"] == 6  # the longest test's positions, plus one
    source = resolve_model(str(folder))
    ids = build_workload(source.family, source.config, 1, 3, 5, source.text_ids, 1234).ids[0].tolist()
    calls = [(e["ids"], e["n_past"]) for e in log if e.get("call") == "model-f16.bin"]
    # one repetition: the 3-token prompt in one call, then one call per generated token with the cache's length
    assert calls == [(ids[:3], 0), (ids[:4], 3), (ids[:5], 4)]


def test_batches_above_one_and_a_folder_chatglm_cpp_cannot_convert_are_skipped_with_the_reason(tmp_path, fake_package):
    folder = _glm4_folder(tmp_path)
    report = _bench(folder, fake_package, "-b", "1,2", "-t", "tg2")
    cpp = {r["batch"]: r for r in report["rows"] if r["engine"] == ENGINE}
    assert cpp[1]["status"] == OK and (cpp[2]["status"], cpp[2]["reason"]) == (SKIPPED, BATCH_ONE)
    loads = len(_log(tmp_path))
    native = _bench(tmp_path / "native", fake_package, "-t", "tg2")
    (skipped,) = [r for r in native["rows"] if r["engine"] == ENGINE]
    assert skipped["status"] == SKIPPED and "remote-code layout" in skipped["reason"]
    assert len(_log(tmp_path)) == loads  # chatglm.cpp was not started for it
