"""ChatGLM-6B under tensor parallelism on the CPU with gloo: TP=2 and TP=4 compute what TP=1 computes, through the
same split rules and ``glm_engine.load`` that GLM-130B uses, and ``glm-engine chat --tp 2`` replies as ``--tp 1``.

Ranks are started with torch's own elastic launcher (the Python API) and through the CLI; each start costs a few
seconds on a small machine, so the model is tiny (``chatglm-tiny``: 2 layers, 4 heads, a 4096-token vocabulary).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import glm_engine
from glm_engine.backends.cpu import CpuBackend
from glm_engine.cli.main import app
from glm_engine.conformance.thresholds import threshold_for
from glm_engine.model.chatglm.config import chatglm_preset
from glm_engine.model.chatglm.weights import random_state_dict, weight_layout
from glm_engine.parallel.communicator import init_from_environment
from glm_engine.quant.reference import quantize
from glm_engine.tokenizer import BUILTIN_TOKENIZER_PATH
from tests.test_tensor_parallel import _launch, nmse, run_cli

CONFIG = chatglm_preset("chatglm-tiny")
PROMPT = [*range(20, 28), CONFIG.gmask_token_id, CONFIG.bos_token_id]  # text, [gMASK], <sop>
TEACHER = [40, 41, 42, 43]  # forced decode steps after the prompt
MESSAGES = [{"role": "user", "content": "Hello there"}]
NEW_TOKENS = 8
# The same bar as GLM-130B's TP tests: TP>1 against TP=1 logits in fp32 differ by partial-sum order only.
TP_LOGITS_NMSE = 1e-10
# The CPU's INT4 kernels round activations and partial products to bf16, so each rank's partial sum rounds apart:
# the conformance bound for quantized model logits applies.
TP_INT4_NMSE = threshold_for("model:logits:int4-rowwise", torch.float32).max_nmse
FOLDER_ENV = "GLM_ENGINE_TEST_CHATGLM_FOLDER"


def write_hf_folder(folder: Path, state_dict: dict, bits: int = 0) -> Path:
    """A ChatGLM Hugging Face folder: config.json, model.safetensors and the tokenizer."""
    folder.mkdir(parents=True)
    config = CONFIG.with_overrides(quantization_bit=bits)
    (folder / "config.json").write_text(json.dumps({**config.to_hf_dict(), "architectures": ["ChatGLMModel"]}))
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / "model.safetensors"))
    shutil.copyfile(BUILTIN_TOKENIZER_PATH, folder / "ice_text.model")
    return folder


def teacher_forced(engine: glm_engine.Engine) -> torch.Tensor:
    """Logits of the prompt (prefill) and of each teacher-forced step through the KV cache, ``[1, n, vocab]``."""
    ids = torch.tensor([PROMPT + TEACHER])
    positions, blocked = engine.family.prompt_inputs(engine.config, ids)
    runner, n = engine.runner, len(PROMPT)
    cache = runner.new_cache(1, ids.shape[1])
    with torch.inference_mode():
        out = [runner.forward(ids[:, :n], positions[..., :n], blocked[..., :n, :n], cache)]
        for col in range(n, ids.shape[1]):
            step = (ids[:, col : col + 1], positions[..., col : col + 1], blocked[..., col : col + 1, : col + 1])
            out.append(runner.forward(*step, cache))
    return torch.cat(out, dim=1)


def results(engine: glm_engine.Engine) -> dict:
    """What each rank (and the TP=1 reference) reports: logits, greedy tokens and a greedy chat reply."""
    completion = engine.generate("Once upon a time", do_sample=False, max_new_tokens=NEW_TOKENS)[0]
    reply = engine.chat(MESSAGES, do_sample=False, max_new_tokens=NEW_TOKENS)
    return {"logits": teacher_forced(engine), "greedy": completion.token_ids[0], "reply": reply["content"]}


def load(folder: str, tp: int = 1, comm=None) -> glm_engine.Engine:
    return glm_engine.load(folder, backend="cpu", dtype="fp32", tp=tp, communicator=comm)


def _rank_results() -> dict:
    """Run by each rank: the float and the INT4 release, both loaded at this TP degree."""
    comm = init_from_environment(CpuBackend())
    try:
        folder = os.environ[FOLDER_ENV]
        float_results = results(load(folder, comm.world_size, comm))
        int4 = teacher_forced(load(folder + "-int4", comm.world_size, comm))
        return {**float_results, "int4_logits": int4, "rows": comm.world_size}
    finally:
        comm.close()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chatglm") / "hf"
    state = random_state_dict(CONFIG, 5, torch.float16)
    write_hf_folder(folder, state)
    int4 = dict(state)
    for key in weight_layout(CONFIG).quantizable_keys:
        int4[key], int4[key + "_scale"] = quantize(state[key], 4)
    write_hf_folder(Path(f"{folder}-int4"), int4, bits=4)
    return folder


@pytest.fixture(scope="module")
def reference(folders) -> dict:
    return {**results(load(str(folders))), "int4_logits": teacher_forced(load(f"{folders}-int4"))}


@pytest.mark.parametrize("tp", [2, 4])
def test_chatglm_at_tp_n_gives_the_tp1_logits_tokens_and_replies(folders, reference, tmp_path, tp):
    os.environ[FOLDER_ENV] = str(folders)
    try:
        ranks = _launch(_rank_results, tmp_path, nproc=tp)
    finally:
        del os.environ[FOLDER_ENV]
    assert reference["logits"].shape == (1, len(PROMPT) + len(TEACHER), CONFIG.vocab_size)
    for rank in range(tp):
        assert nmse(ranks[rank]["logits"], reference["logits"]) <= TP_LOGITS_NMSE, rank
        assert nmse(ranks[rank]["int4_logits"], reference["int4_logits"]) <= TP_INT4_NMSE, rank
        assert ranks[rank]["greedy"] == reference["greedy"]
        assert ranks[rank]["reply"] == reference["reply"]
    assert nmse(reference["int4_logits"], reference["logits"]) > TP_INT4_NMSE  # the release runs quantized
    assert all(torch.equal(ranks[r]["logits"], ranks[0]["logits"]) for r in range(tp))  # one answer on every rank


def test_chat_tp2_replies_as_chat_tp1(folders, tmp_path):
    args = ["chat", "--checkpoint", str(folders), "--backend", "cpu", "--dtype", "fp32", "--greedy"]
    args += ["--max-new-tokens", str(NEW_TOKENS)]
    single = CliRunner().invoke(app, args, input="hello\nclear\nagain\nstop\n")
    assert single.exit_code == 0, single.output
    parallel = run_cli([*args, "--tp", "2"], stdin="hello\nclear\nagain\nstop\n")
    assert parallel.returncode == 0, parallel.stderr
    replies = [line for line in parallel.stdout.splitlines() if line.startswith("ChatGLM-6B")]
    assert len(replies) == 2  # printed once, by rank 0
    assert replies == [line for line in single.output.splitlines() if line.startswith("ChatGLM-6B")]
    assert "tensor parallel over 2 ranks" in parallel.stderr
