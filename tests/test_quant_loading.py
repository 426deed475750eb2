"""Quantization end to end: at load (``quant=``), offline (``glm-engine quantize``), and quantized checkpoints."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import glm_engine
from glm_engine.checkpoint import open_checkpoint
from glm_engine.cli.main import app
from glm_engine.engine import DEFAULT_MODEL
from glm_engine.errors import InputError
from glm_engine.ops.interface import PackedLinear
from glm_engine.quant.spec import QuantSpec

runner = CliRunner()
IDS = torch.tensor([[30, 31, 32, 33, 34, 35]])
POSITIONS = torch.arange(6)[None]
BLOCKED = ~torch.ones(6, 6, dtype=torch.bool).tril()[None, None]


def logits(engine) -> torch.Tensor:
    return engine.forward(IDS, POSITIONS, BLOCKED)


def nmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean() / (b**2).mean())


@pytest.mark.parametrize(
    ("quant", "scheme", "group", "bar"), [("int8", "rowwise", None, 1e-4), ("int4", "groupwise", 64, 2e-2)]
)
def test_quantized_at_load_stays_close_to_the_float_model(quant, scheme, group, bar):
    base = logits(glm_engine.load(dtype="fp32"))
    engine = glm_engine.load(dtype="fp32", quant=quant, quant_scheme=scheme, quant_group_size=group)
    layer = engine.runner.weights.layers[0]
    assert isinstance(layer.query_key_value_weight, PackedLinear)
    assert isinstance(layer.input_layernorm_weight, torch.Tensor)  # LayerNorms, biases, embedding stay float
    assert engine.runner.weights.word_embeddings.dtype == torch.float32
    assert 0 < nmse(logits(engine), base) < bar
    assert any("linears in INT" in note for note in engine.notes)


def test_offline_quantization_loads_as_the_same_quantized_model(tmp_path):
    result = runner.invoke(
        app,
        [
            "quantize",
            "--checkpoint",
            DEFAULT_MODEL,
            "--output",
            str(tmp_path / "q"),
            "--bits",
            "4",
            "--scheme",
            "groupwise",
            "--group-size",
            "32",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "INT4 groupwise, 32 columns per scale" in result.output
    assert (tmp_path / "q" / "ice_text.model").is_file()  # the tokenizer travels with the weights
    checkpoint = open_checkpoint(tmp_path / "q")
    assert checkpoint.quant_spec == QuantSpec(4, 32)
    stored = glm_engine.load(str(tmp_path / "q"), dtype="fp32")
    at_load = glm_engine.load(dtype="fp32", quant="int4", quant_scheme="groupwise", quant_group_size=32)
    assert torch.equal(logits(stored), logits(at_load))
    with pytest.raises(InputError, match="already quantized"):
        glm_engine.load(str(tmp_path / "q"), quant="int8")


def test_quantization_requests_are_checked_before_loading():
    with pytest.raises(InputError, match="group size 128 does not divide the 192 inputs"):
        glm_engine.load(quant="int4", quant_scheme="groupwise")
    with pytest.raises(InputError, match="choose int8 or int4"):
        QuantSpec.parse("int2")
    with pytest.raises(InputError, match="group size must be one of 32, 64, 128"):
        QuantSpec.parse("int4", "groupwise", 100)
    with pytest.raises(InputError, match="goes with the groupwise scheme"):
        QuantSpec.parse("int8", "rowwise", 64)


def test_run_quant_from_the_command_line(tmp_path):
    args = ["run", "--quant", "int8", "--top-k", "1", "--out-seq-length", "24", "--output-path", str(tmp_path)]
    result = runner.invoke(app, args, input="The sky is [MASK].\nstop\n")
    assert result.exit_code == 0, result.output
    assert "linears in INT8 rowwise" in result.stderr and "Output:" in result.output
    bad = runner.invoke(app, ["run", "--quant", "int4", "--quant-group-size", "64"], input="stop\n")
    assert bad.exit_code == 1 and "goes with the groupwise scheme" in bad.output


def test_chatglm_quantizes_at_load_and_chats_quantized():
    from glm_engine import load_chatglm

    ids = torch.tensor([[5, 6, 7, 4001, 4004]])
    positions = torch.tensor([[[0, 1, 2, 3, 3], [0, 0, 0, 0, 1]]])
    blocked = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    blocked[..., :4, 4] = True  # the context is bidirectional; <sop> sees everything
    base = load_chatglm("chatglm-tiny", dtype="fp32")
    engine = load_chatglm("chatglm-tiny", dtype="fp32", quant="int8")
    assert isinstance(engine.runner.weights.layers[1].dense_4h_to_h_weight, PackedLinear)
    assert engine.runner.weights.nbytes() < base.runner.weights.nbytes()
    assert 0 < nmse(engine.forward(ids, positions, blocked), base.forward(ids, positions, blocked)) < 1e-3
    result = runner.invoke(
        app,
        ["chat", "--checkpoint", "chatglm-tiny", "--quant", "int4", "--greedy", "--max-new-tokens", "4"],
        input="hello\n",
    )
    assert result.exit_code == 0, result.output
    assert "linears in INT4 rowwise" in result.stderr


def test_quant_output_runs_the_logits_through_a_quantized_copy_of_the_embedding():
    from glm_engine.ops.torch_ops import DequantizingLinear
    from glm_engine.quant.weight import QuantizedWeight

    linears_only = glm_engine.load(dtype="fp32", quant="int8")
    engine = glm_engine.load(dtype="fp32", quant="int8", quant_output=True)
    weights = engine.runner.weights
    assert isinstance(weights.output, PackedLinear) and weights.logits_weight is weights.output
    assert weights.word_embeddings.dtype == torch.float32  # the lookup keeps the float table
    vocab, hidden = weights.word_embeddings.shape
    assert weights.nbytes() - linears_only.runner.weights.nbytes() >= vocab * hidden  # one INT8 copy added
    assert any("output projection in INT8 rowwise" in note for note in engine.notes)
    float_output = logits(linears_only)
    assert 0 < nmse(logits(engine), float_output) < 1e-3
    # The same model with the portable dequantizing path for the copy: the CPU kernel computes that product.
    portable = linears_only.runner.weights
    portable.output = DequantizingLinear(QuantizedWeight.quantize(portable.word_embeddings.half(), 8))
    assert nmse(logits(engine), logits(linears_only)) < 1e-5


def test_quant_output_and_schemes_need_a_quantization():
    with pytest.raises(InputError, match="--quant-output quantizes the output projection"):
        glm_engine.load(quant_output=True)
    with pytest.raises(InputError, match="go with --quant int8"):
        glm_engine.load(quant_scheme="groupwise")
    bad = runner.invoke(app, ["run", "--quant-group-size", "64"], input="stop\n")
    assert bad.exit_code == 1 and "go with --quant int8" in bad.output


def test_chatglm_quant_output_quantizes_lm_head():
    from glm_engine import load_chatglm

    linears_only = load_chatglm("chatglm-tiny", dtype="fp32", quant="int4")
    engine = load_chatglm("chatglm-tiny", dtype="fp32", quant="int4", quant_output=True)
    assert isinstance(engine.runner.weights.output, PackedLinear)
    assert engine.runner.weights.nbytes() < linears_only.runner.weights.nbytes()
    with pytest.raises(InputError, match="--quant-output quantizes lm_head"):
        load_chatglm("chatglm-tiny", quant_output=True)
