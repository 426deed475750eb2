"""The exported-folder format on its own, without writing a graph: which backend a folder needs, and
``genai_config.json`` written from an export's description and read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glm_engine.backends.registry import REGISTRY
from glm_engine.errors import CheckpointError, InputError
from glm_engine.exported import (
    BACKEND_FOR_KIND,
    ENGINE_FILE,
    EXPORT_FORMAT_VERSION,
    GENAI_CONFIG_FILE,
    ExportedModel,
    QuantTarget,
    config_from_section,
    exported_backend,
    exported_kind,
    genai_config,
    model_section,
    read_exported,
    refuse_exported_folder,
)
from glm_engine.model.chatglm.config import chatglm_preset
from glm_engine.model.glm130b.config import preset
from glm_engine.model.registry import family_of
from glm_engine.quant.spec import QuantSpec


def _folder(tmp_path: Path, *files: str) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text("{}")
    return folder


def test_a_folder_is_exported_only_once_genai_config_is_written(tmp_path: Path) -> None:
    assert exported_kind(None) is None
    assert exported_kind(tmp_path / "missing") is None
    assert exported_kind(_folder(tmp_path, "model.onnx", ENGINE_FILE)) is None  # interrupted: no genai_config.json


def test_the_engine_file_marks_a_tensorrt_folder(tmp_path: Path) -> None:
    onnx = _folder(tmp_path / "a", GENAI_CONFIG_FILE)
    trt = _folder(tmp_path / "b", GENAI_CONFIG_FILE, ENGINE_FILE)
    assert (exported_kind(onnx), exported_backend(onnx)) == ("onnx", "onnxruntime")
    assert (exported_kind(trt), exported_backend(trt)) == ("tensorrt", "tensorrt")
    assert exported_backend(tmp_path) is None


def test_each_kind_names_a_registered_backend() -> None:
    assert {REGISTRY.get(name).name for name in BACKEND_FOR_KIND.values()} == {"onnxruntime", "tensorrt"}


def test_refusing_an_exported_folder_names_its_backend(tmp_path: Path) -> None:
    refuse_exported_folder(None)
    refuse_exported_folder(tmp_path)  # not exported: nothing to say
    with pytest.raises(InputError, match=r"is an ONNX export: use --backend onnxruntime \(backend='onnxruntime'\)"):
        refuse_exported_folder(_folder(tmp_path / "a", GENAI_CONFIG_FILE))
    with pytest.raises(InputError, match=r"is a TensorRT engine folder: use --backend tensorrt \(backend='tensorrt'\)"):
        refuse_exported_folder(_folder(tmp_path / "b", GENAI_CONFIG_FILE, ENGINE_FILE))


@pytest.mark.parametrize(
    ("config", "kind", "position_dims"),
    [(preset("glm-tiny"), "glm", 2), (chatglm_preset("chatglm-tiny"), "chatglm", 3)],
    ids=["glm", "chatglm"],
)
def test_a_model_section_reads_back_as_the_same_config(config, kind: str, position_dims: int) -> None:
    section = model_section(config)
    assert section["type"] == kind
    assert len(section.pop("position_ids_shape")) == position_dims
    assert config_from_section(section, "test") == config


@pytest.mark.parametrize("config", [preset("glm-tiny"), chatglm_preset("chatglm-tiny")], ids=["glm", "chatglm"])
def test_genai_config_reads_back_with_positions_bounded_by_the_export(tmp_path: Path, config) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    exported = ExportedModel(folder, config, torch.float16, 64, QuantSpec(4, 64), QuantTarget.tensorrt, 123, "ab")
    (folder / GENAI_CONFIG_FILE).write_text(json.dumps(genai_config(exported, "a test")))
    info = read_exported(folder)
    assert info.config == config.with_overrides(max_sequence_length=64)
    assert info.dtype == torch.float16 and info.model_file == exported.model_file
    assert info.model_type == family_of(config).name
    quant = info.description["quantization"]
    assert (quant["bits"], quant["group_size"], quant["target"], quant["accuracy_level"]) == (4, 64, "tensorrt", None)


def test_read_exported_refuses_another_format_version(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    exported = ExportedModel(folder, preset("glm-tiny"), torch.float32, 64, None, QuantTarget.ort, 1, "ab")
    description = genai_config(exported, "a test")
    description["format_version"] = EXPORT_FORMAT_VERSION + 1
    (folder / GENAI_CONFIG_FILE).write_text(json.dumps(description))
    with pytest.raises(CheckpointError, match="re-export the model"):
        read_exported(folder)
    with pytest.raises(CheckpointError, match="is not an exported model"):
        read_exported(tmp_path)
