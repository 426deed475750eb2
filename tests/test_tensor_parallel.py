"""Tensor parallelism on the CPU with gloo: TP=2 computes what TP=1 computes, and failures are named by rank.

Two ranks are started with torch's own elastic launcher (the Python API) or through ``glm-engine run --tp 2`` (the
CLI end to end). Multi-process tests are few and small: each start costs a few seconds on a small machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from typer.testing import CliRunner

import glm_engine
from glm_engine.backends.base import DeviceInfo
from glm_engine.backends.cpu import CpuBackend
from glm_engine.backends.registry import get_backend, op_table_for
from glm_engine.checkpoint import open_checkpoint
from glm_engine.checkpoint.convert import convert_tp
from glm_engine.cli.main import app
from glm_engine.errors import ParallelError
from glm_engine.generation.decode import decode
from glm_engine.generation.masks import GenerationRow
from glm_engine.generation.strategies import BaseStrategy
from glm_engine.model.glm130b.weights import parameter_shapes, random_state_dict, split_of, weight_layout
from glm_engine.model.graph import DecoderModel
from glm_engine.model.registry import family_of
from glm_engine.model.weights import ModelWeights, ReadRequest
from glm_engine.parallel.communicator import init_from_environment
from glm_engine.parallel.degree import check_device_count
from glm_engine.parallel.launch import failure_summary
from glm_engine.parallel.sharding import merge
from glm_engine.parallel.vocab import vocab_parallel_embedding
from tests.conftest import SMALL_CONFIG, SMALL_LAYOUT
from tests.reference_tp import reference_shards
from tests.test_convert import write_reference_sat

REPO = Path(__file__).resolve().parent.parent
# The bar for TP=2 against TP=1 logits in fp32 (different partial-sum order only).
TP_LOGITS_NMSE = 1e-10
CONFIG = SMALL_CONFIG
SEED = 7
PROMPT = [30, 31, 500, 33, 12, 504]  # a [MASK] prompt ending in sop
TEACHER = [40, 41, 42, 43]  # forced decode steps after the prompt
GREEDY_STEPS = 12


def nmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean() / (b.double() ** 2).mean())


def _model(comm=None) -> DecoderModel:
    ops = op_table_for(get_backend("cpu"), torch.float32)
    return DecoderModel.from_state_dict(CONFIG, random_state_dict(CONFIG, SEED), ops, comm)


def _teacher_forced_logits(model: DecoderModel) -> torch.Tensor:
    """Prefill logits of the prompt, then the logits of each cached decode step, concatenated on the sequence."""
    total = len(PROMPT) + len(TEACHER)
    tokens = torch.tensor([PROMPT + TEACHER])
    positions = torch.tensor([[0, 1, 2, 3, 4, 5] + [2] * len(TEACHER)])  # [MASK] at 2: generated tokens take it
    blocked = torch.ones(total, total, dtype=torch.bool).triu(1)
    blocked[:, : len(PROMPT) - 1] = False  # the context before sop is visible to everyone
    blocked = blocked[None, None]
    cache = model.new_cache(1, total)
    n = len(PROMPT)
    pieces = [model.forward(tokens[:, :n], positions[:, :n], blocked[..., :n, :n], cache)]
    for col in range(n, total):
        pieces.append(
            model.forward(
                tokens[:, col : col + 1], positions[:, col : col + 1], blocked[..., col : col + 1, : col + 1], cache
            )
        )
    return torch.cat(pieces, dim=1)


def _generate(model: DecoderModel, strategy: BaseStrategy) -> list[int]:
    return decode(model, [GenerationRow(PROMPT, 2, False)], [GREEDY_STEPS], strategy, SMALL_LAYOUT.pad)[0][0]


SAT_TP4_ENV = "GLM_ENGINE_TEST_SAT_TP4"  # a TP=4 SAT checkpoint of the same weights, for the ranks to load


def _sat_model(comm, folder: str | None = None) -> DecoderModel:
    """This rank's model read from a TP=4 SAT checkpoint (re-sharded 4 -> 2 at load time; quantized ones stay so)."""
    tp, rank = (1, 0) if comm is None else (comm.world_size, comm.rank)
    checkpoint = open_checkpoint(folder or os.environ[SAT_TP4_ENV])
    state = checkpoint.rank_state_dict(rank, tp, torch.float32)
    ops = op_table_for(get_backend("cpu"), torch.float32)
    weights = ModelWeights.assemble(weight_layout(CONFIG), state, torch.float32, "cpu", ops.prepare_quantized)
    return DecoderModel(CONFIG, weights, ops, comm)


def _rank_results() -> dict:
    """Run by each rank: logits, greedy and sampled tokens, and the embedding lookup, all from this rank's shards."""
    comm = init_from_environment(CpuBackend())
    try:
        with torch.inference_mode():
            model = _model(comm)
            ids = torch.tensor([[0, 5, 255, 256, 300, 511]])  # both halves of the vocabulary
            return {
                "sat_logits": _teacher_forced_logits(_sat_model(comm)),
                "int8_logits": _teacher_forced_logits(_sat_model(comm, os.environ[SAT_TP4_ENV] + "-int8")),
                "logits": _teacher_forced_logits(model),
                "greedy": _generate(model, BaseStrategy(top_k=1)),
                "sampled": _generate(
                    model, BaseStrategy(top_k=0, top_p=0.9, generator=torch.Generator().manual_seed(3))
                ),
                "embedding": vocab_parallel_embedding(model.ops, ids, model.weights.word_embeddings, comm),
                "local_rows": model.weights.word_embeddings.shape[0],
            }
    finally:
        comm.close()


def _launch(function, tmp_path: Path, nproc: int = 2) -> dict:
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"test-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        logs_specs=DefaultLogsSpecs(log_dir=str(tmp_path / "logs")),
    )
    return elastic_launch(config, function)()


@pytest.fixture(scope="module")
def tp2_results(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("sat") / "tp4"
    write_reference_sat(folder, reference_shards(random_state_dict(CONFIG, SEED), 4), CONFIG)
    convert_tp(folder, f"{folder}-int8", 4, bits=8)  # the reference's INT8 at TP=4: scales of each rank's slice
    os.environ[SAT_TP4_ENV] = str(folder)
    try:
        return {**_launch(_rank_results, tmp_path_factory.mktemp("tp2")), "int8_folder": f"{folder}-int8"}
    finally:
        del os.environ[SAT_TP4_ENV]


def test_a_tp4_sat_checkpoint_runs_at_tp2_like_the_same_weights_split_directly(tp2_results):
    for rank in (0, 1):
        assert torch.equal(tp2_results[rank]["sat_logits"], tp2_results[rank]["logits"])


def test_a_tp4_int8_checkpoint_runs_quantized_at_tp2_like_at_tp1(tp2_results):
    with torch.inference_mode():
        reference = _teacher_forced_logits(_sat_model(None, tp2_results["int8_folder"]))
    for rank in (0, 1):
        assert nmse(tp2_results[rank]["int8_logits"], reference) <= TP_LOGITS_NMSE
    assert nmse(reference, tp2_results[0]["logits"]) > TP_LOGITS_NMSE  # it is the quantized model


def test_tp2_logits_equal_tp1_through_prefill_and_cached_decode_steps(tp2_results):
    with torch.inference_mode():
        reference = _teacher_forced_logits(_model())
    for rank in (0, 1):
        logits = tp2_results[rank]["logits"]
        assert logits.shape == reference.shape == (1, len(PROMPT) + len(TEACHER), CONFIG.vocab_size)
        assert nmse(logits, reference) <= TP_LOGITS_NMSE, rank
    assert torch.equal(tp2_results[0]["logits"], tp2_results[1]["logits"])  # every rank sees the same logits


def test_tp2_greedy_tokens_equal_tp1_and_sampling_agrees_across_ranks(tp2_results):
    with torch.inference_mode():
        reference = _generate(_model(), BaseStrategy(top_k=1))
    assert len(reference) == GREEDY_STEPS
    assert tp2_results[0]["greedy"] == tp2_results[1]["greedy"] == reference
    assert tp2_results[0]["sampled"] == tp2_results[1]["sampled"]


def test_vocab_parallel_embedding_holds_half_the_rows_and_equals_the_full_lookup(tp2_results):
    full = random_state_dict(CONFIG, SEED)["transformer.word_embeddings.weight"]
    expected = F.embedding(torch.tensor([[0, 5, 255, 256, 300, 511]]), full)
    for rank in (0, 1):
        assert tp2_results[rank]["local_rows"] == CONFIG.vocab_size // 2
        assert torch.equal(tp2_results[rank]["embedding"], expected)


def test_rank_state_dicts_have_the_rank_shapes_and_merge_back_to_the_full_tensors():
    full = random_state_dict(CONFIG, SEED)
    reader = family_of(CONFIG).state_dict_reader(full, CONFIG, "random weights")
    ranks = [reader.read(ReadRequest(rank, 2)) for rank in (0, 1)]
    expected_shapes = parameter_shapes(CONFIG, tp=2)
    for key, shape in expected_shapes.items():
        pieces = [r[key] for r in ranks]
        assert tuple(pieces[0].shape) == shape
        assert torch.equal(merge(split_of(key), pieces), full[key])


def run_cli(args: list[str], extra_path: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``python -m glm_engine.cli ...`` in a fresh process, as a user runs it (``extra_path`` goes first on
    PYTHONPATH, for a ``sitecustomize`` that breaks one rank; ``stdin`` is what the user types)."""
    paths = [str(extra_path)] if extra_path else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "glm_engine.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        input=stdin,
    )


def test_run_tp2_prints_and_saves_the_answers_of_run_tp1(tmp_path):
    queries = tmp_path / "queries.tsv"
    queries.write_text("q1\tThe sky is [MASK].\nq2\tOnce upon a time\n", encoding="utf-8")
    common = ["run", "--checkpoint", "glm-tiny", "--input-source", str(queries), "--with-id", "--top-k", "1"]
    common += ["--out-seq-length", "20"]
    single = CliRunner().invoke(app, [*common, "--output-path", str(tmp_path / "tp1")])
    assert single.exit_code == 0, single.output
    parallel = run_cli([*common, "--output-path", str(tmp_path / "tp2"), "--tp", "2"])
    assert parallel.returncode == 0, parallel.stderr
    outputs = [line for line in parallel.stdout.splitlines() if line.startswith("Output:")]
    assert len(outputs) == 2  # printed once, by rank 0
    assert outputs == [line for line in single.output.splitlines() if line.startswith("Output:")]
    assert "tensor parallel over 2 ranks" in parallel.stderr
    for name in ("q1.txt", "q2.txt"):
        assert (tmp_path / "tp2" / name).read_text(encoding="utf-8") == (tmp_path / "tp1" / name).read_text(
            encoding="utf-8"
        )
    assert sorted(p.name for p in (tmp_path / "tp2").iterdir()) == ["q1.txt", "q2.txt"]


BREAK_RANK_1 = """
import os
if os.environ.get("RANK") == "1":
    import glm_engine.cli.run
    from glm_engine.errors import CheckpointError

    def load(*args, **kwargs):
        raise CheckpointError("shard 1 of the checkpoint is truncated")

    glm_engine.cli.run.load = load
"""


def test_a_user_error_on_rank_1_stops_every_rank_and_shows_its_message(tmp_path):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(BREAK_RANK_1, encoding="utf-8")
    queries = tmp_path / "queries.txt"
    queries.write_text("Hello [MASK]\n", encoding="utf-8")
    args = ["run", "--checkpoint", "glm-tiny", "--input-source", str(queries), "--output-path", str(tmp_path / "out")]
    result = run_cli([*args, "--tp", "2"], extra_path=tmp_path / "inject")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: rank 1: shard 1 of the checkpoint is truncated"
    assert "ChildFailedError" not in result.stderr and "Traceback" not in result.stderr
    assert "Output:" not in result.stdout


def _failure(tmp_path: Path, rank: int, message: str | None, timestamp: int, exitcode: int = 1) -> ProcessFailure:
    error_file = tmp_path / f"error-{rank}.json"
    if message is not None:
        payload = {"message": {"message": message, "extraInfo": {"py_callstack": "", "timestamp": str(timestamp)}}}
        error_file.write_text(json.dumps(payload), encoding="utf-8")
    return ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=exitcode, error_file=str(error_file))


def test_the_failure_summary_names_the_cause_not_the_ranks_that_lost_their_peer(tmp_path):
    failures = {
        0: _failure(tmp_path, 0, "CollectiveError: all_reduce failed on rank 0, most likely ...", timestamp=100),
        1: _failure(tmp_path, 1, "ValueError: bad shape", timestamp=101),
        2: _failure(tmp_path, 2, None, timestamp=99, exitcode=-15),  # stopped by the launcher
    }
    summary = failure_summary(ChildFailedError("glm-engine", failures))
    assert summary == "rank 1 failed: ValueError: bad shape (its traceback is above)"
    failures[1] = _failure(tmp_path, 1, "ParallelError: tp=2 needs 2 ranks", timestamp=101)
    assert failure_summary(ChildFailedError("glm-engine", failures)) == "rank 1: tp=2 needs 2 ranks"


def test_an_invalid_tp_degree_is_refused_before_launch_with_the_valid_degrees():
    demo = CliRunner().invoke(app, ["run", "--tp", "2", "--input-source", "interactive"])
    assert demo.exit_code == 1
    assert "3 attention heads" in demo.output and "valid degrees: 1" in demo.output
    assert "the built-in demo model" in demo.output
    tiny = CliRunner().invoke(app, ["run", "--tp", "3", "--checkpoint", "glm-tiny"])
    assert tiny.exit_code == 1
    assert "valid degrees: 1, 2, 4" in tiny.output


def test_load_refuses_a_bad_degree_and_tp_without_ranks(monkeypatch):
    with pytest.raises(ParallelError, match=r"160 GeGLU units do not divide by 3\); valid degrees: 1, 2, 4$"):
        glm_engine.load("glm-tiny", tp=3)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ParallelError, match="torchrun"):
        glm_engine.load("glm-tiny", tp=2)


class _OneGpuBackend(CpuBackend):
    device_type = "cuda"

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo(0, "fake gpu")]


def test_more_ranks_than_devices_is_refused_before_touching_a_device(monkeypatch):
    with pytest.raises(ParallelError, match="this node has 1"):
        check_device_count(_OneGpuBackend(), 2)
    check_device_count(CpuBackend(), 8)  # the CPU takes any number of ranks
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "localhost", "MASTER_PORT": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ParallelError, match="LOCAL_RANK 1, but this node has 1"):
        init_from_environment(_OneGpuBackend())
