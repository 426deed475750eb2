"""Damaged checkpoints: a random truncation or byte flip of a small checkpoint of every layout is a typed error or
the same model, never a crash or a silently different model (docs/checkpoints.md#damaged-files).

"The same model" is the undamaged load: an equal config and every tensor with the same dtype, shape and bits, read
through the path ``glm_engine.load`` takes (``open_source`` and the family's weight reader). The layouts: GLM-130B
native (one safetensors file, and sharded with an index), SAT (a ``torch.save`` zip shard), and ChatGLM-6B Hugging
Face folders (``pytorch_model.bin``; safetensors shards with an index).

Which bytes are flipped: those that describe the weights (safetensors headers, the structure and metadata records of
``torch.save`` zips, index files, ``latest``), not tensor data, which carries no checksum a load verifies:
:func:`test_damage_inside_tensor_data_is_not_detected` pins that limit. A flip in ``config.json`` may turn a value
into another valid one (``layernorm_epsilon``), so there the property is only "a typed error or a load".
"""

from __future__ import annotations

import dataclasses
import json
import pickletools
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from test_chatglm_checkpoint import CONFIG

from glm_engine.checkpoint import save_native
from glm_engine.checkpoint.convert import convert_tp
from glm_engine.checkpoint.native import write_native
from glm_engine.engine.source import open_source
from glm_engine.errors import CheckpointError, GlmEngineError
from glm_engine.model.chatglm.weights import random_state_dict as chatglm_state_dict
from glm_engine.model.glm130b.config import CONFORMANCE_CONFIG
from glm_engine.model.glm130b.weights import random_state_dict
from glm_engine.model.weights import ReadRequest

GLM_CONFIG = CONFORMANCE_CONFIG.with_overrides(num_layers=1)
CHATGLM_CONFIG = dataclasses.replace(CONFIG, num_layers=1)
LAYOUTS = ("native", "native-sharded", "sat", "hf-bin", "hf-safetensors")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".bin")
ZIP_LOCAL_HEADER_SIZE = 30
# Bounded and reproducible: the same examples on every run, no example database written.
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
)


def write_chatglm_folder(folder: Path, layout: str) -> None:
    folder.mkdir()
    hf_config = {**CHATGLM_CONFIG.to_hf_dict(), "architectures": ["ChatGLMModel"]}
    (folder / "config.json").write_text(json.dumps(hf_config))
    weights = chatglm_state_dict(CHATGLM_CONFIG, 2, dtype=torch.float16)
    if layout == "bin":
        torch.save(weights, folder / "pytorch_model.bin")
        return
    keys = list(weights)
    weight_map = {}
    for number, names in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :]), start=1):
        name = f"model-0000{number}-of-00002.safetensors"
        save_file({k: weights[k].contiguous() for k in names}, str(folder / name))
        weight_map.update(dict.fromkeys(names, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    weights = random_state_dict(GLM_CONFIG, 1, dtype=torch.float16)
    save_native(root / "native", GLM_CONFIG, weights)
    half = sum(t.numel() * t.element_size() for t in weights.values()) // 2
    write_native(root / "native-sharded", GLM_CONFIG, weights.items(), max_shard_bytes=half)
    convert_tp(root / "native", root / "sat", 1)
    write_chatglm_folder(root / "hf-bin", "bin")
    write_chatglm_folder(root / "hf-safetensors", "safetensors")
    return root


def load(folder: Path) -> tuple[object, dict[str, torch.Tensor]]:
    """The config and the stored tensors, as ``glm_engine.load`` reads them."""
    source = open_source(str(folder))
    return source.config, source.reader.read(ReadRequest())


@pytest.fixture(scope="module")
def originals(checkpoints) -> dict[str, tuple[object, dict[str, torch.Tensor]]]:
    return {layout: load(checkpoints / layout) for layout in LAYOUTS}


def files_of(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def descriptive_ranges(path: Path) -> list[range]:
    """The bytes of ``path`` that describe the weights rather than hold tensor values: a safetensors file's length
    and JSON header; everything in a ``torch.save`` zip but its ``data/N`` storage records; all of any other file."""
    raw = path.read_bytes()
    if path.suffix == ".safetensors":
        return [range(0, 8 + struct.unpack("<Q", raw[:8])[0])]
    if path.suffix not in (".pt", ".bin"):
        return [range(len(raw))]
    storages = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if "/data/" in f"/{info.filename}":  # torch.save's storages: <archive>/data/<key>
                at = info.header_offset
                name_length, extra_length = struct.unpack("<HH", raw[at + 26 : at + 30])
                start = at + ZIP_LOCAL_HEADER_SIZE + name_length + extra_length
                storages.append((start, start + info.compress_size))
    ranges, position = [], 0
    for start, end in sorted(storages):
        ranges.append(range(position, start))
        position = end
    ranges.append(range(position, len(raw)))
    return [r for r in ranges if len(r)]


def damaged_copy(folder: Path, relative: str, damage, into: Path) -> Path:
    """A copy of ``folder`` in ``into`` whose file ``relative`` is replaced by ``damage(its bytes)``."""
    copy = into / folder.name
    shutil.copytree(folder, copy)
    target = copy / relative
    target.write_bytes(damage(target.read_bytes()))
    return copy


def same_model(loaded, original) -> bool:
    (config, tensors), (config0, tensors0) = loaded, original
    return (
        config == config0
        and tensors.keys() == tensors0.keys()
        and all(
            isinstance(tensors[k], torch.Tensor)
            and tensors[k].dtype == tensors0[k].dtype
            and tensors[k].shape == tensors0[k].shape
            and torch.equal(tensors[k].view(torch.uint8), tensors0[k].view(torch.uint8))
            for k in tensors0
        )
    )


def outcome(folder: Path, original) -> str:
    """``"error"`` (a typed error with a message), ``"same"`` or ``"different"``; any other exception propagates
    and fails the test as the crash it is."""
    try:
        loaded = load(folder)
    except GlmEngineError as exc:
        assert str(exc), "a typed error must say what went wrong"
        return "error"
    return "same" if same_model(loaded, original) else "different"


@pytest.mark.parametrize("layout", LAYOUTS)
@PROPERTY
@given(data=st.data())
def test_a_truncated_file_is_refused(checkpoints, originals, layout, data):
    """Every weight file is checked against its own header (safetensors offsets, the zip's central directory), so
    any cut is an error; a cut text file may lose only trailing whitespace."""
    folder = checkpoints / layout
    relative = data.draw(st.sampled_from(files_of(folder)), label="file")
    size = (folder / relative).stat().st_size
    keep = data.draw(st.integers(0, size - 1), label="bytes kept")
    with tempfile.TemporaryDirectory() as scratch:
        result = outcome(damaged_copy(folder, relative, lambda raw: raw[:keep], Path(scratch)), originals[layout])
    if relative.endswith(WEIGHT_SUFFIXES):
        assert result == "error"
    else:
        assert result in ("error", "same")


@pytest.mark.parametrize("layout", LAYOUTS)
@PROPERTY
@given(data=st.data())
def test_a_flipped_byte_that_describes_the_weights_is_refused_or_harmless(checkpoints, originals, layout, data):
    folder = checkpoints / layout
    relative = data.draw(st.sampled_from([f for f in files_of(folder) if f != "config.json"]), label="file")
    positions = [p for r in descriptive_ranges(folder / relative) for p in r]
    position = positions[data.draw(st.integers(0, len(positions) - 1), label="descriptive byte")]
    flip = data.draw(st.integers(1, 255), label="xor")

    def damage(raw: bytes) -> bytes:
        return raw[:position] + bytes([raw[position] ^ flip]) + raw[position + 1 :]

    with tempfile.TemporaryDirectory() as scratch:
        assert outcome(damaged_copy(folder, relative, damage, Path(scratch)), originals[layout]) in ("error", "same")


@pytest.mark.parametrize("layout", ["native", "hf-bin"])
@settings(parent=PROPERTY, max_examples=40)
@given(data=st.data())
def test_a_flipped_config_byte_never_crashes(checkpoints, originals, layout, data):
    """A config value changed to another valid one that fits the shapes loads (there is no checksum to tell);
    anything else is a typed error."""
    folder = checkpoints / layout
    size = (folder / "config.json").stat().st_size
    position = data.draw(st.integers(0, size - 1), label="position")
    flip = data.draw(st.integers(1, 255), label="xor")

    def damage(raw: bytes) -> bytes:
        return raw[:position] + bytes([raw[position] ^ flip]) + raw[position + 1 :]

    with tempfile.TemporaryDirectory() as scratch:
        assert outcome(damaged_copy(folder, "config.json", damage, Path(scratch)), originals[layout]) in (
            "error",
            "same",
            "different",
        )


def zip_record(path: Path, suffix: str) -> tuple[zipfile.ZipInfo, int]:
    """The zip record whose name ends with ``suffix``, and where its data starts."""
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info, info.header_offset + ZIP_LOCAL_HEADER_SIZE + name_length + extra_length


def central_entry(raw: bytes, name: str) -> int:
    """Where the central directory entry of record ``name`` starts."""
    return raw.rindex(b"PK\x01\x02", 0, raw.rindex(name.encode()))


def shift_data(path: Path) -> bytes:
    """The local header of a storage record says its data starts 4 bytes later (a damaged length field): the data
    descriptor's CRC-32 then lines up with the bytes after the data, so only its signature tells."""
    raw = bytearray(path.read_bytes())
    info, _ = zip_record(path, "data/8")
    at = info.header_offset + 28
    raw[at : at + 2] = struct.pack("<H", struct.unpack("<H", raw[at : at + 2])[0] + 4)
    return bytes(raw)


def repickle_stride(path: Path) -> bytes:
    """One pickle byte changed: the first 2-D tensor's row stride one less, still inside its storage."""
    raw = bytearray(path.read_bytes())
    info, start = zip_record(path, "data.pkl")
    ops = list(pickletools.genops(bytes(raw[start : start + info.compress_size])))
    names = [op.name for op, _, _ in ops]
    row = next(
        i
        for i in range(len(ops))
        if names[i : i + 3] == ["BININT1", "BININT1", "TUPLE2"] and ops[i + 1][1] == 1 and ops[i][1] > 1
    )
    raw[start + ops[row][2] + 1] -= 1
    return bytes(raw)


def mark_as_folder(path: Path) -> bytes:
    """The central directory marks ``byteorder`` as a folder (the DOS attribute), which torch's zip reader honours."""
    raw = bytearray(path.read_bytes())
    info, _ = zip_record(path, "byteorder")
    raw[central_entry(bytes(raw), info.filename) + 38] |= 0x10
    return bytes(raw)


@pytest.mark.parametrize(
    ("damage", "torch_alone"),
    [(shift_data, "loads another model"), (repickle_stride, "loads another model"), (mark_as_folder, "crashes")],
)
@pytest.mark.parametrize("layout", ["sat", "hf-bin"])
def test_zip_damage_torch_alone_misses_is_refused(checkpoints, tmp_path, layout, damage, torch_alone):
    folder = checkpoints / layout
    relative = next(f for f in files_of(folder) if f.endswith((".pt", ".bin")))
    copy = damaged_copy(folder, relative, lambda _: damage(folder / relative), tmp_path)
    if torch_alone == "loads another model":
        damaged = torch.load(copy / relative, weights_only=True, mmap=True)
        undamaged = torch.load(folder / relative, weights_only=True, mmap=True)
        if layout == "sat":
            damaged, undamaged = damaged["module"], undamaged["module"]
        assert damaged.keys() == undamaged.keys()
        assert not all(torch.equal(damaged[k], undamaged[k]) for k in undamaged)
    else:
        with pytest.raises(ValueError):  # torch's own error, untyped
            torch.load(copy / relative, weights_only=True, mmap=True)
    with pytest.raises(CheckpointError, match=r"is not a valid torch.save zip archive .*download or convert it again"):
        load(copy)


@pytest.mark.parametrize(("layout", "relative"), [("native", "model.safetensors"), ("hf-bin", "pytorch_model.bin")])
def test_damage_inside_tensor_data_is_not_detected(checkpoints, originals, tmp_path, layout, relative):
    """The documented limit: no checksum of tensor values is verified, so a flipped data byte loads as another
    value of one tensor. A checksum added to the format should turn this test into an error."""
    folder = checkpoints / layout
    middle = descriptive_ranges(folder / relative)[0].stop + 100  # inside the first tensor's data

    def damage(raw: bytes) -> bytes:
        return raw[:middle] + bytes([raw[middle] ^ 0x01]) + raw[middle + 1 :]

    config, tensors = load(damaged_copy(folder, relative, damage, tmp_path))
    config0, tensors0 = originals[layout]
    changed = [k for k in tensors0 if not torch.equal(tensors[k].view(torch.uint8), tensors0[k].view(torch.uint8))]
    assert config == config0 and len(changed) == 1
