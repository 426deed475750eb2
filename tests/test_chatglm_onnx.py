"""ChatGLM-6B in ONNX: the graph (2-D positions, split rotary, tanh GeLU, separate lm_head) against ChatGLMModel, and a
Hugging Face folder exported from the CLI, verified and chatted with on onnxruntime."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'glm-engine[onnx]')")

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'glm-engine[onnx]')")

from typer.testing import CliRunner  # noqa: E402

from glm_engine import load_chatglm  # noqa: E402
from glm_engine.backends.registry import get_backend, op_table_for  # noqa: E402
from glm_engine.cli.main import app  # noqa: E402
from glm_engine.engine import load  # noqa: E402
from glm_engine.errors import InputError  # noqa: E402
from glm_engine.export.onnx_export import export_onnx, export_state_dict  # noqa: E402
from glm_engine.export.verify import nmse, verify_export  # noqa: E402
from glm_engine.exported import GENAI_CONFIG_FILE, MODEL_FILE, read_exported  # noqa: E402
from glm_engine.generation.masks import generation_blocked  # noqa: E402
from glm_engine.model.chatglm.config import chatglm_preset  # noqa: E402
from glm_engine.model.chatglm.weights import random_state_dict, weight_layout  # noqa: E402
from glm_engine.model.graph import DecoderModel  # noqa: E402
from glm_engine.quant.reference import quantize  # noqa: E402
from glm_engine.tokenizer import BUILTIN_TOKENIZER_PATH  # noqa: E402

cli = CliRunner()
TINY = chatglm_preset("chatglm-tiny")  # vocabulary laid out around the packaged test tokenizer


def write_hf_folder(folder, state_dict, config=TINY):
    """A tiny ChatGLM-6B Hugging Face folder: config.json, model.safetensors and ice_text.model."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**config.to_hf_dict(), "architectures": ["ChatGLMModel"]}))
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / "model.safetensors"))
    shutil.copyfile(BUILTIN_TOKENIZER_PATH, folder / "ice_text.model")
    return folder


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return write_hf_folder(tmp_path_factory.mktemp("chatglm") / "hf", random_state_dict(TINY, 5, torch.float16))


def test_chatglm_export_matches_the_model_over_prefill_and_cached_steps(tmp_path):
    config = chatglm_preset("chatglm-tiny")
    state = random_state_dict(config, 0)
    model = DecoderModel.from_state_dict(config, state, op_table_for(get_backend("cpu"), torch.float32))
    export_state_dict(state, config, tmp_path / "chatglm", max_seq=64)
    session = ort.InferenceSession(str(tmp_path / "chatglm" / MODEL_FILE), providers=["CPUExecutionProvider"])
    b, context, total = 2, 6, 9
    ids = torch.randint(5, 3999, (b, total))
    ids[:, context - 2], ids[:, context - 1] = config.gmask_token_id, config.bos_token_id
    positions = torch.stack(
        (torch.arange(total).clamp(max=context - 2), (torch.arange(total) - context + 2).clamp(min=0))
    )
    positions = positions.expand(b, 2, total).contiguous()
    blocked = generation_blocked(context, total)[None, None].expand(b, 1, total, total)
    heads, d = config.num_attention_heads, config.head_dim
    past = [np.zeros((b, heads, 0, d), np.float32)] * (2 * config.num_layers)
    cache = model.new_cache(b, total)
    for start, stop in ((0, context), *((c, c + 1) for c in range(context, total))):
        feeds = {
            "input_ids": ids[:, start:stop].numpy(),
            "position_ids": positions[..., start:stop].numpy(),
            "attention_mask": blocked[:, :, start:stop, :stop].contiguous().numpy(),
            "logits_to_keep": np.arange(stop - start),
        }
        feeds.update({f"past_key_values.{i // 2}.{('key', 'value')[i % 2]}": p for i, p in enumerate(past)})
        logits, *past = session.run(None, feeds)
        with torch.inference_mode():
            want = model.forward(
                ids[:, start:stop], positions[..., start:stop], blocked[:, :, start:stop, :stop], cache
            )
        assert nmse(torch.from_numpy(logits), want) < 1e-9
        assert torch.equal(torch.from_numpy(logits[:, -1]).argmax(-1), want[:, -1].argmax(-1))


def test_cli_exports_a_chatglm_folder_that_passes_the_checker_and_verify(hf_folder, tmp_path):
    out = tmp_path / "onnx"
    result = cli.invoke(app, ["export", "onnx", "--checkpoint", str(hf_folder), "--output", str(out), "--verify"])
    assert result.exit_code == 0, result.output
    assert result.output.count("PASS") == 1 and "against the CPU backend" in result.output
    onnx.checker.check_model(str(out / MODEL_FILE), full_check=True)
    model = onnx.load(str(out / MODEL_FILE), load_external_data=False)
    positions = next(i for i in model.graph.input if i.name == "position_ids").type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in positions] == ["batch_size", 2, "sequence_length"]
    described = json.loads((out / GENAI_CONFIG_FILE).read_text())
    assert described["model"]["type"] == "chatglm" and described["model"]["eos_token_id"] == [4005]
    assert described["model"]["decoder"]["shapes"]["position_ids"] == ["batch_size", 2, "sequence_length"]
    assert "position_ids_shape" not in described["model"]
    assert read_exported(out).config == TINY
    assert (out / "ice_text.model").read_bytes() == BUILTIN_TOKENIZER_PATH.read_bytes()


def test_export_takes_the_tokenizer_the_checkpoint_folder_lacks_from_the_tokenizer_flag(tmp_path):
    """Issue 18, item 9: the error says to pass --tokenizer, so `export onnx` takes it (a file or its folder), copies
    it into the export, and --verify runs with it."""
    folder = write_hf_folder(tmp_path / "hf", random_state_dict(TINY, 5, torch.float16))
    given = tmp_path / "tokenizer"
    given.mkdir()
    (folder / "ice_text.model").rename(given / "ice_text.model")
    base = ["export", "onnx", "--checkpoint", str(folder)]
    result = cli.invoke(app, [*base, "--output", str(tmp_path / "none")])
    assert result.exit_code == 1 and "pass --tokenizer PATH" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "none").exists()
    for name, tokenizer in (("file", given / "ice_text.model"), ("folder", given)):
        out = tmp_path / name
        result = cli.invoke(app, [*base, "--output", str(out), "--tokenizer", str(tokenizer), "--verify"])
        assert result.exit_code == 0, result.output
        assert "PASS" in result.output
        assert (out / "ice_text.model").read_bytes() == BUILTIN_TOKENIZER_PATH.read_bytes()
    engine = load(str(tmp_path / "file"), backend="onnxruntime")
    assert engine.chat([{"role": "user", "content": "hi"}], max_new_tokens=2)


def test_greedy_chat_on_onnxruntime_gives_the_cpu_backends_tokens(hf_folder, tmp_path):
    out = tmp_path / "onnx"
    assert cli.invoke(app, ["export", "onnx", "--checkpoint", str(hf_folder), "--output", str(out)]).exit_code == 0
    on_ort = load_chatglm(out, backend="onnxruntime", backend_options={"provider": "cpu"})
    on_cpu = load_chatglm(hf_folder, backend="cpu", dtype="fp32")
    for prompt in ("hello world", "the quick brown fox"):
        want = on_cpu.generate(prompt, do_sample=False, max_new_tokens=12)
        assert on_ort.generate(prompt, do_sample=False, max_new_tokens=12) == want and want
    replies = {}
    for backend, folder in (("onnxruntime", out), ("cpu", hf_folder)):
        args = ["chat", "--checkpoint", str(folder), "--backend", backend, "--greedy", "--max-new-tokens", "10"]
        result = cli.invoke(app, [*args, *(["--dtype", "fp32"] if backend == "cpu" else [])], input="hello\nstop\n")
        assert result.exit_code == 0, result.output
        replies[backend] = [line for line in result.output.splitlines() if line.startswith("ChatGLM-6B")]
    assert replies["onnxruntime"] == replies["cpu"] and len(replies["cpu"]) == 1


def test_exports_load_through_the_one_load_and_name_the_backend_they_need(hf_folder, tmp_path):
    out = tmp_path / "onnx"
    export_state_dict(random_state_dict(TINY, 0), TINY, out, max_seq=32)
    on_ort = load(str(out), backend="onnxruntime")  # one load() for every family and source
    assert on_ort.family.name == "chatglm" and on_ort.chat([{"role": "user", "content": "hi"}], max_new_tokens=2)
    result = cli.invoke(app, ["chat", "--checkpoint", str(out), "--backend", "cpu"])
    assert result.exit_code == 1 and "use --backend onnxruntime" in result.output
    for loader in (load_chatglm, load):  # the Python API says the same on an op-level backend (auto here: cpu)
        with pytest.raises(InputError, match="is an ONNX export: use --backend onnxruntime"):
            loader(str(out))
    export_onnx("glm-tiny", tmp_path / "glm", max_seq=32)
    result = cli.invoke(app, ["chat", "--checkpoint", str(tmp_path / "glm"), "--backend", "onnxruntime"])
    assert (
        result.exit_code == 1
        and "GLM-130B model, which has no chat format: run it with `glm-engine run" in result.output
    )


def test_a_full_size_preset_is_refused_instead_of_making_random_weights(tmp_path):
    result = cli.invoke(app, ["export", "onnx", "--checkpoint", "chatglm-6b", "--output", str(tmp_path / "x")])
    assert result.exit_code == 1 and "only for small presets" in result.output and not (tmp_path / "x").exists()


@pytest.mark.parametrize("bits", [8, 4])
def test_a_quantized_release_exports_quantized_as_stored_and_verifies(tmp_path, bits):
    """THUDM's INT4/INT8 releases keep their integers and scales: MatMulNBits, checked against the CPU backend."""
    state = random_state_dict(TINY, 6, torch.float16)
    for key in weight_layout(TINY).quantizable_keys:
        state[key], state[key + "_scale"] = quantize(state[key], bits)
    folder = write_hf_folder(tmp_path / "hf", state, TINY.with_overrides(quantization_bit=bits))
    out = tmp_path / "onnx"
    result = cli.invoke(app, ["export", "onnx", "--checkpoint", str(folder), "--output", str(out), "--verify"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / GENAI_CONFIG_FILE).read_text())["quantization"]["bits"] == bits
    model = onnx.load(str(out / MODEL_FILE), load_external_data=False)
    assert sum(n.op_type == "MatMulNBits" for n in model.graph.node) == 4 * TINY.num_layers
    requantized = ["export", "onnx", "--checkpoint", str(folder), "--output", str(tmp_path / "x"), "--quant", "int4"]
    again = cli.invoke(app, requantized)
    assert again.exit_code == 1 and "already INT" in again.output


@pytest.mark.parametrize(("quant", "target"), [("int4", "ort"), ("int8", "tensorrt")])
def test_quant_options_export_a_chatglm_folder_that_verifies(hf_folder, tmp_path, quant, target):
    out = tmp_path / quant
    args = ["export", "onnx", "--checkpoint", str(hf_folder), "--output", str(out), "--quant", quant]
    result = cli.invoke(app, [*args, "--target", target])
    assert result.exit_code == 0, result.output
    report = verify_export(str(out), str(hf_folder))
    assert report.passed, report.describe()


def test_quant_output_quantizes_lm_head_and_verifies(hf_folder, tmp_path):
    out = tmp_path / "qo"
    args = ["export", "onnx", "--checkpoint", str(hf_folder), "--output", str(out), "--quant", "int8"]
    result = cli.invoke(app, [*args, "--quant-output", "--verify"])
    assert result.exit_code == 0, result.output
    assert "output projection too" in result.output and "PASS" in result.output
    model = onnx.load(str(out / MODEL_FILE), load_external_data=False)
    assert sum(n.op_type == "MatMulNBits" for n in model.graph.node) == 4 * TINY.num_layers + 1
    assert any(i.name == "lm_head.qweight" for i in model.graph.initializer)
