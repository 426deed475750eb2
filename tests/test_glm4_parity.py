"""Parity of the causal GLM families with a reference that is not this project's code: transformers'
``GlmForCausalLM`` and ``Glm4ForCausalLM`` on tiny checkpoints they saved, and the same weights in THUDM's remote-code
layout (ChatGLM2/ChatGLM3/GLM-4), loaded from their folders through the families' own readers.

Prefill logits, KV-cache decode logits (teacher-forced with the reference's greedy tokens from ``generate``) and the
greedy tokens themselves are compared: fp32 NMSE <= 1e-10, fp16/bf16 <= 1e-5 (the issue's bars). transformers is a
test-only dependency; without it these tests skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glm_engine.backends.registry import get_backend, op_table_for
from glm_engine.engine.source import open_source
from glm_engine.model.graph import DecoderModel
from glm_engine.model.weights import ModelWeights, ReadRequest
from tests.glm4_reference import TINY, make_native_folder, make_remote_folder, reference_class, remote_numerics

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MAX_NMSE = {"fp32": 1e-10, "fp16": 1e-5, "bf16": 1e-5}
PROMPTS = torch.randint(2, 256, (2, 9), generator=torch.Generator().manual_seed(7))
STEPS = 6
TINY_HEADS = TINY["num_attention_heads"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("glm4")
    out = {t: make_native_folder(root / t, t) for t in ("glm", "glm4")}
    for release in ("chatglm2", "chatglm3", "glm4"):
        out[f"remote-{release}"] = make_remote_folder(out["glm"], root / f"remote-{release}", release)
    out["glm-mha"] = make_native_folder(root / "glm-mha", "glm", seed=2, num_key_value_heads=TINY_HEADS)
    out["remote-mha"] = make_remote_folder(out["glm-mha"], root / "remote-mha", "chatglm3")
    return out


def load_folder(folder: Path, dtype: torch.dtype) -> DecoderModel:
    """Our model from a checkpoint folder: recognised, validated and read by its family, as ``glm_engine.load``
    does (the tokenizer aside)."""
    source = open_source(folder)
    ops = op_table_for(get_backend("cpu"), dtype, 0, source.family.parts(source.config).required_ops())
    tensors = source.reader.read(ReadRequest(0, 1, dtype, ops.device))
    weights = ModelWeights.assemble(source.family.weight_layout(source.config), tensors, dtype, ops.device, None)
    return DecoderModel(source.config, weights, ops)


def nmse(ours: torch.Tensor, reference: torch.Tensor) -> float:
    ours, reference = ours.double(), reference.double()
    return float(((ours - reference) ** 2).sum() / (reference**2).sum())


def reference_run(folder: Path, model_type: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """transformers' prefill logits, per-step logits of greedy ``generate`` (KV cache) and its tokens."""
    model = reference_class(model_type).from_pretrained(folder, dtype=dtype).eval()
    with torch.inference_mode():
        prefill = model(PROMPTS).logits
        out = model.generate(
            PROMPTS,
            attention_mask=torch.ones_like(PROMPTS),
            max_new_tokens=STEPS,
            min_new_tokens=STEPS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    return prefill, torch.stack(out.logits, dim=1), out.sequences[:, PROMPTS.shape[1] :]


def our_run(model: DecoderModel, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Our prefill logits and the logits of each cached step fed the reference's tokens."""
    batch, n = PROMPTS.shape
    positions, blocked = model.family.prompt_inputs(model.config, torch.cat([PROMPTS, tokens], dim=1))
    cache = model.new_cache(batch, n + STEPS)
    with torch.inference_mode():
        prefill = model.forward(PROMPTS, positions[:, :n], blocked[..., :n, :n], cache)
        steps = [prefill[:, -1]]
        for k in range(STEPS - 1):
            col = n + k
            logits = model.forward(
                tokens[:, k : k + 1], positions[:, col : col + 1], blocked[..., col : col + 1, : col + 1], cache
            )
            steps.append(logits[:, -1])
    return prefill, torch.stack(steps, dim=1)


def check(model: DecoderModel, reference: tuple, dtype_name: str) -> None:
    ref_prefill, ref_steps, ref_tokens = reference
    prefill, steps = our_run(model, ref_tokens)
    bar = MAX_NMSE[dtype_name]
    assert nmse(prefill, ref_prefill) <= bar
    assert nmse(steps, ref_steps) <= bar
    assert torch.equal(steps.argmax(-1), ref_tokens)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("model_type", ["glm", "glm4"])
def test_native_folders_match_transformers(folders, model_type, dtype_name):
    dtype = DTYPES[dtype_name]
    reference = reference_run(folders[model_type], model_type, dtype)
    check(load_folder(folders[model_type], dtype), reference, dtype_name)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("release", ["chatglm2", "chatglm3", "glm4"])
def test_remote_layouts_match_the_reference_with_remote_numerics(folders, release, dtype_name):
    """The same weights renamed to the remote-code layout; the reference computes RMSNorm (and ChatGLM2's rotary
    table) the remote way, which only matters below fp32."""
    dtype = DTYPES[dtype_name]
    with remote_numerics("glm", chatglm2_rotary=release == "chatglm2"):
        reference = reference_run(folders["glm"], "glm", dtype)
    model = load_folder(folders[f"remote-{release}"], dtype)
    assert model.config.release == release
    check(model, reference, dtype_name)


@pytest.mark.parametrize("dtype_name", ["fp32", "bf16"])
def test_a_remote_config_without_multi_query_attention_reads_its_rows_per_head(folders, dtype_name):
    """``multi_query_attention`` false (configuration_chatglm.py's default): one key/value head per query head, and
    the reference views the fused rows per head, not as ``[all q | all k | all v]``."""
    dtype = DTYPES[dtype_name]
    with remote_numerics("glm"):
        reference = reference_run(folders["glm-mha"], "glm", dtype)
    model = load_folder(folders["remote-mha"], dtype)
    assert model.config.qkv_per_head and model.local_kv_heads == TINY_HEADS
    check(model, reference, dtype_name)


def test_remote_and_native_agree_in_fp32_without_patches(folders):
    """The documented correspondence alone (names, rows, rope_ratio) reproduces the native logits in fp32."""
    reference = reference_run(folders["glm"], "glm", torch.float32)
    check(load_folder(folders["remote-glm4"], torch.float32), reference, "fp32")
