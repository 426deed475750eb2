"""The causal GLM families under tensor parallelism on the CPU with gloo: TP=2 splits the 2 key/value groups, TP=4
replicates them (ranks 0-1 hold group 0, ranks 2-3 group 1), and both compute what TP=1 computes, from a remote-code
folder, a native one (fused q/k/v) and an INT4 release in the remote layout (``chatglm2-6b-int4``'s form: per-row
scales, which every split keeps).

Ranks are started with torch's elastic launcher; each reads its own shard from the folder through the family's reader
and runs prefill plus cached decode steps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from glm_engine.backends.cpu import CpuBackend
from glm_engine.backends.registry import get_backend, op_table_for
from glm_engine.conformance.thresholds import threshold_for
from glm_engine.engine.source import open_source
from glm_engine.model.graph import DecoderModel
from glm_engine.model.weights import ModelWeights, ReadRequest
from glm_engine.parallel.communicator import Communicator, init_from_environment
from glm_engine.quant.reference import quantize
from tests.test_tensor_parallel import _launch, nmse

pytest.importorskip("transformers")
from tests.glm4_reference import make_native_folder, make_remote_folder

FOLDERS_ENV = "GLM_ENGINE_TEST_CAUSAL_FOLDERS"
PROMPT = torch.tensor([[5, 17, 99, 23, 42, 7, 64, 3]])
TEACHER = [11, 12, 13, 14]
TP_LOGITS_NMSE = 1e-10  # fp32: partial sums in another order only
TP_INT4_NMSE = threshold_for("model:logits:int4-rowwise", torch.float32).max_nmse
# The linears an INT4 release stores quantized (chatglm2-6b-int4's quantization.py).
QUANTIZED_SUFFIXES = (
    "query_key_value.weight",
    "self_attention.dense.weight",
    "dense_h_to_4h.weight",
    "dense_4h_to_h.weight",
)


def rank_model(folder: str, comm: Communicator) -> DecoderModel:
    source = open_source(folder)
    ops = op_table_for(get_backend("cpu"), torch.float32, 0, source.family.parts(source.config).required_ops())
    request = ReadRequest(comm.rank, comm.world_size, torch.float32, ops.device)
    tensors = source.reader.read(request)
    layout = source.family.weight_layout(source.config)
    weights = ModelWeights.assemble(layout, tensors, torch.float32, ops.device, ops.prepare_quantized)
    return DecoderModel(source.config, weights, ops, comm)


def teacher_forced(model: DecoderModel) -> torch.Tensor:
    ids = torch.cat([PROMPT, torch.tensor([TEACHER])], dim=1)
    positions, blocked = model.family.prompt_inputs(model.config, ids)
    n = PROMPT.shape[1]
    cache = model.new_cache(1, ids.shape[1])
    with torch.inference_mode():
        out = [model.forward(ids[:, :n], positions[:, :n], blocked[..., :n, :n], cache)]
        for col in range(n, ids.shape[1]):
            step = (ids[:, col : col + 1], positions[:, col : col + 1], blocked[..., col : col + 1, : col + 1])
            out.append(model.forward(*step, cache))
    return torch.cat(out, dim=1)


def results(comm: Communicator) -> dict:
    out = {}
    for name in os.environ[FOLDERS_ENV].split(os.pathsep):
        model = rank_model(name, comm)
        out[name] = {"logits": teacher_forced(model), "kv_heads": model.local_kv_heads}
    return out


def _rank_results() -> dict:
    comm = init_from_environment(CpuBackend())
    try:
        return results(comm)
    finally:
        comm.close()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("causal-tp")
    native = make_native_folder(root / "glm4-0414", "glm4")
    remote = make_remote_folder(make_native_folder(root / "glm", "glm", seed=1), root / "remote-glm4", "glm4")
    return [str(native), str(remote), str(int4_release(remote, root / "remote-glm4-int4"))]


def int4_release(folder: Path, into: Path) -> Path:
    """``folder`` as an INT4 release: the four linears of each layer stored as packed int8 with a per-row scale."""
    into.mkdir()
    state = load_file(str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    for key in [k for k in state if k.endswith(QUANTIZED_SUFFIXES)]:
        state[key], state[key + "_scale"] = quantize(state[key].half(), 4)
    (into / "config.json").write_text(json.dumps({**config, "quantization_bit": 4}))
    save_file(state, str(into / "model.safetensors"))
    return into


@pytest.fixture(scope="module")
def reference(folders) -> dict:
    os.environ[FOLDERS_ENV] = os.pathsep.join(folders)
    try:
        return results(Communicator())
    finally:
        del os.environ[FOLDERS_ENV]


@pytest.mark.parametrize("tp", [2, 4])
def test_causal_families_at_tp_n_give_the_tp1_logits(folders, reference, tmp_path: Path, tp: int):
    os.environ[FOLDERS_ENV] = os.pathsep.join(folders)
    try:
        ranks = _launch(_rank_results, tmp_path, nproc=tp)
    finally:
        del os.environ[FOLDERS_ENV]
    for folder in folders:
        for rank in range(tp):
            got = ranks[rank][folder]
            assert got["kv_heads"] == (1 if tp >= 2 else 2)  # 2 groups: split at TP=2, one replicated at TP=4
            bound = TP_INT4_NMSE if folder.endswith("int4") else TP_LOGITS_NMSE
            assert nmse(got["logits"], reference[folder]["logits"]) <= bound
    float_, int4 = (reference[folder]["logits"] for folder in folders[1:])
    assert nmse(int4, float_) > TP_INT4_NMSE  # the release runs quantized
