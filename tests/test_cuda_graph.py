"""Decode-step CUDA graphs: when they are used, and that the static-buffer step computes what the eager step does.

The buffers, the cache view that writes at a device-held position, the full-length mask, the key buckets and the
re-capture rules are device-independent, so on the CPU the same :class:`DecodeGraph` runs with an eager "capture"
(``lambda step: step``) against the ordinary cached decode. The clean-up after a failed capture runs against a double
of the CUDA calls that follows their documented behaviour (``cuda_graph_double.py``). Only the CUDA-graph recording
itself needs a GPU (last test).
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import pytest
import torch
from cuda_graph_double import INVALIDATED, NOT_PERMITTED, FakeCudaGraphs

import glm_engine
import glm_engine.backends.torch_cuda.graphs as graphs_module
import glm_engine.backends.torch_cuda.ops as torch_cuda_ops
from glm_engine.backends.base import RunnerCapabilities
from glm_engine.backends.cuda.ops import CudaOps, cuda_policy
from glm_engine.backends.torch_cuda.capture import CaptureFailed, cuda_graph_capture
from glm_engine.backends.torch_cuda.graphs import (
    ENV_VAR,
    MAX_CAPTURES,
    MIN_GRAPH_STEPS,
    DecodeGraph,
    GraphedDecoder,
    Verdict,
    graphs_verdict,
    key_bucket,
)
from glm_engine.generation.masks import generation_blocked, generation_positions
from glm_engine.kernels.triton import triton_verdict
from glm_engine.ops.interface import EagerStepper

OWN_OPS = RunnerCapabilities(kv_cache=True, tensor_parallel=1, op_level=True)


def eager(step):
    return step


def cuda_runner(**extra: object) -> SimpleNamespace:
    """Stands in for a model on a cuda device: graphs_verdict only looks at these attributes."""
    return SimpleNamespace(**{"device": torch.device("cuda", 0), "capabilities": OWN_OPS, **extra})


def test_graphs_are_used_on_cuda_by_default_and_each_refusal_says_why(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    exported = RunnerCapabilities(kv_cache=True, tensor_parallel=1, op_level=False)
    two_ranks = RunnerCapabilities(kv_cache=True, tensor_parallel=2, op_level=True)
    assert graphs_verdict(cuda_runner())
    assert "cpu" in graphs_verdict(SimpleNamespace(device=torch.device("cpu"), capabilities=OWN_OPS)).reason
    assert "caller" in graphs_verdict(cuda_runner(), requested=False).reason
    assert "caller" in graphs_verdict(cuda_runner(cuda_graphs=False)).reason
    assert "exported graph" in graphs_verdict(cuda_runner(capabilities=exported)).reason
    assert "tensor parallel" in graphs_verdict(cuda_runner(capabilities=two_ranks)).reason
    assert "repay" in graphs_verdict(cuda_runner(), steps=MIN_GRAPH_STEPS - 1).reason
    monkeypatch.setenv(ENV_VAR, "0")
    assert f"{ENV_VAR}=0" in graphs_verdict(cuda_runner()).reason
    assert graphs_verdict(cuda_runner(), requested=True)  # an explicit request beats the environment


def test_the_torch_cuda_op_table_hands_out_the_graphed_decoder_or_eager_steps_with_the_verdicts_reason(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    ops = CudaOps(torch.device("cpu"), torch.float32)
    graphed = ops.decode_stepper(cuda_runner(), 16, None)
    assert isinstance(graphed, GraphedDecoder) and graphed.reason.startswith(graphs_verdict(cuda_runner()).reason)
    refused = ops.decode_stepper(cuda_runner(), 16, False)
    assert isinstance(refused, EagerStepper) and "caller" in refused.reason
    too_short = ops.decode_stepper(cuda_runner(), MIN_GRAPH_STEPS - 1, None)
    assert isinstance(too_short, EagerStepper) and "repay" in too_short.reason


def prefill(model, tokens, positions, blocked, context):
    cache = model.new_cache(tokens.shape[0], tokens.shape[1])
    model.forward(tokens[:, :context], positions[:, :context], blocked[..., :context, :context], cache)
    return cache


@pytest.mark.parametrize("batch_blocked", [1, 2])
def test_static_buffer_step_equals_the_eager_cached_step(small_model, batch_blocked):
    total, context = 16, 9
    tokens = torch.randint(20, 400, (2, total), generator=torch.Generator().manual_seed(0))
    positions = generation_positions(context, total, 3, False).expand(2, -1)
    blocked = generation_blocked(context, total)[None, None].expand(batch_blocked, -1, -1, -1)
    eager_cache = prefill(small_model, tokens, positions, blocked, context)
    graph_cache = prefill(small_model, tokens, positions, blocked, context)
    graph = None
    for col in range(context, total):
        args = (tokens[:, col : col + 1], positions[:, col : col + 1], blocked[..., col : col + 1, : col + 1])
        expected = small_model.forward(*args, eager_cache)
        graph = graph or DecodeGraph(small_model, graph_cache, *args, capture=eager)
        assert graph.matches(graph_cache, *args)
        got = graph.step(graph_cache, *args)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert bool(graph.blocked[..., col + 1 :].all())  # not-yet-written positions stay blocked
    assert graph_cache.length == eager_cache.length == total
    torch.testing.assert_close(graph_cache.storage, eager_cache.storage)


def test_decoder_recaptures_for_a_new_cache_then_gives_up_with_a_reason(small_model):
    decoder = GraphedDecoder(small_model, Verdict(True, "test"), capture=eager)
    tokens = torch.full((1, 1), 30)
    positions = torch.zeros(1, 1, dtype=torch.long)
    for _ in range(MAX_CAPTURES + 1):
        cache = small_model.new_cache(1, 8)
        small_model.forward(tokens, positions, torch.zeros(1, 1, 1, 1, dtype=torch.bool), cache)
        decoder.step(cache, tokens, positions + 1, torch.zeros(1, 1, 1, 2, dtype=torch.bool))
    assert decoder.captures == MAX_CAPTURES and decoder.graph_steps == MAX_CAPTURES and decoder.eager_steps == 1
    assert "more than" in decoder.reason


@pytest.fixture(scope="module")
def engine():
    return glm_engine.load("glm-tiny", backend="cpu", dtype="fp32")


def generate_with_graph_emulation(monkeypatch, engine, prompts, **options):
    """Generate with every decode step going through DecodeGraph's buffers (eager capture on the CPU): the CPU op
    table, which chooses the runner's decode stepper, hands out a graphed decoder as a torch.cuda table would."""
    made: list[GraphedDecoder] = []

    def emulated(runner, steps, requested):
        made.append(GraphedDecoder(runner, Verdict(True, "emulated"), capture=eager))
        return made[-1]

    with monkeypatch.context() as patch:
        patch.setattr(engine.runner.ops, "decode_stepper", emulated)
        results = engine.generate(prompts, **options)
    assert made and all(d.graph_steps > 0 and d.eager_steps == 0 for d in made)
    return results, made


def test_greedy_batch_decode_through_graph_buffers_gives_the_same_tokens(monkeypatch, engine):
    prompts = ["天空是[MASK]色的", "Once upon a time"]
    options = dict(out_seq_length=20, top_k=1, top_p=0.0)
    expected = [r.token_ids for r in engine.generate(prompts, **options)]
    results, _ = generate_with_graph_emulation(monkeypatch, engine, prompts, **options)
    assert [r.token_ids for r in results] == expected


def test_beam_search_reorders_rows_in_place_under_one_graph(monkeypatch, engine):
    options = dict(sampling_strategy="BeamSearchStrategy", num_beams=3, out_seq_length=24, deterministic=True)
    expected = engine.generate("The sky is [MASK].", **options)[0].token_ids
    results, made = generate_with_graph_emulation(monkeypatch, engine, "The sky is [MASK].", **options)
    assert results[0].token_ids == expected
    # The beams exist from the first cached step; reordering them in place every step keeps that one graph valid.
    assert made[0].captures == 1 and made[0].graph_steps > 1


class ForbiddenWhileCapturing:
    """The model with an op in its step that may not run while a stream captures (a host sync, as ``.item()``)."""

    def __init__(self, runner, cuda: FakeCudaGraphs) -> None:
        self.runner, self.cuda = runner, cuda

    def forward(self, *args, **kwargs):
        self.cuda.op(permitted_while_capturing=False)
        return self.runner.forward(*args, **kwargs)


def test_a_failed_capture_falls_back_to_eager_steps_without_losing_a_token(monkeypatch, engine):
    """The capture fails the way CUDA documents (the op raises, then ending the invalidated capture raises too): the
    reason leads with the op's error, the stream and allocator are left clean, and the tokens are the eager ones."""
    cuda = FakeCudaGraphs()
    made: list[GraphedDecoder] = []

    def decoder(runner, steps, requested):
        capture = partial(cuda_graph_capture, api=cuda)
        made.append(GraphedDecoder(ForbiddenWhileCapturing(runner, cuda), Verdict(True, "emulated"), capture))
        return made[-1]

    prompts = ["Once upon a time", "天空是[MASK]色的"]
    options = dict(out_seq_length=20, top_k=1, top_p=0.0)
    expected = [r.token_ids for r in engine.generate(prompts, **options)]
    monkeypatch.setattr(engine.runner.ops, "decode_stepper", decoder)
    assert [r.token_ids for r in engine.generate(prompts, **options)] == expected
    assert made[0].graph_steps == 1 and made[0].eager_steps > 0
    assert made[0].fallback.startswith(f"graph capture failed, later steps run eagerly: RuntimeError: {NOT_PERMITTED}")
    assert INVALIDATED in made[0].fallback and made[0].reason == made[0].fallback
    assert cuda.clean()


def naive_capture(step, cuda: FakeCudaGraphs):
    """``torch.cuda.graph``'s order: capture_end on the way out, then the stream restored (not on failure)."""
    graph = cuda.new_graph()
    context = cuda.use_stream(cuda.side_stream())
    context.__enter__()
    graph.capture_begin(pool=cuda.new_pool())
    try:
        step()
    finally:
        graph.capture_end()
    context.__exit__(None, None, None)


def test_the_double_reproduces_the_documented_failure_that_hides_the_first_error():
    """What the clean-up guards against: ending an invalidated capture raises a second error that replaces the op's,
    leaves the capture stream current and the allocator routing to the pool. (A check of the double itself.)"""
    cuda = FakeCudaGraphs()
    with pytest.raises(RuntimeError, match=INVALIDATED) as info:
        naive_capture(lambda: cuda.op(permitted_while_capturing=False), cuda)
    assert NOT_PERMITTED in str(info.value.__context__)
    assert cuda.current != cuda.DEFAULT and cuda.routes and not cuda.clean()


def test_a_failed_op_surfaces_first_and_leaves_the_stream_and_the_allocator_usable():
    cuda = FakeCudaGraphs()
    with pytest.raises(CaptureFailed) as info:
        cuda_graph_capture(lambda: cuda.op(permitted_while_capturing=False), api=cuda)
    failed = info.value
    assert str(failed).startswith(f"RuntimeError: {NOT_PERMITTED} (ending the invalidated capture then raised")
    assert INVALIDATED in str(failed.end_error) and failed.__cause__ is failed.first
    assert cuda.clean()
    replay = cuda_graph_capture(lambda: torch.ones(2), api=cuda)  # the same process captures again afterwards
    assert torch.equal(replay(), torch.ones(2)) and cuda.graphs[-1].replays == 1 and cuda.clean()


def test_a_capture_that_only_fails_to_end_or_begin_is_cleaned_up_too():
    cuda = FakeCudaGraphs()

    def invalidates_silently():  # the capture is invalidated without the op raising (an async error, say)
        cuda.invalidated = True
        return torch.zeros(1)

    with pytest.raises(CaptureFailed, match=INVALIDATED):
        cuda_graph_capture(invalidates_silently, api=cuda)
    assert cuda.clean()
    cuda.side_stream = lambda: cuda.DEFAULT  # capture_begin refuses the default stream
    with pytest.raises(CaptureFailed, match="non-default stream"):
        cuda_graph_capture(lambda: torch.zeros(1), api=cuda)
    assert cuda.clean()


def test_a_broken_device_is_not_mistaken_for_a_capture_problem():
    """After a failed capture the device is synchronized: a sticky error there is raised as it is (eager steps
    could not run either), with the capture's error as its context, not turned into a fallback."""
    cuda = FakeCudaGraphs()

    def step():
        cuda.sticky = RuntimeError("CUDA error: an illegal memory access was encountered")
        cuda.op(permitted_while_capturing=False)

    with pytest.raises(RuntimeError, match="illegal memory access") as info:
        cuda_graph_capture(step, api=cuda)
    assert not isinstance(info.value, CaptureFailed)
    assert cuda.capturing is None and cuda.current == cuda.DEFAULT


def test_an_interrupt_during_capture_is_cleaned_up_and_passed_on_unchanged():
    cuda = FakeCudaGraphs()

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cuda_graph_capture(interrupted, api=cuda)
    assert cuda.clean()


def test_key_buckets_are_powers_of_two_from_the_minimum_up_to_the_cache():
    assert [key_bucket(n, 2048) for n in (1, 64, 65, 128, 129, 1000, 1025, 2048)] == [
        64, 64, 128, 128, 256, 1024, 2048, 2048,
    ]  # fmt: skip
    assert key_bucket(300, 320) == 320 and key_bucket(3, 40, minimum=4) == 4 and key_bucket(5, 40, minimum=4) == 8


def test_only_decode_attention_that_reads_every_key_gets_buckets(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    kernel = CudaOps(torch.device("cpu"), torch.float16, cuda_policy(True, "triton available"))
    assert not kernel.decode_stepper(cuda_runner(), 16, None).key_buckets  # the Triton kernel skips blocked tiles
    fp32 = CudaOps(torch.device("cpu"), torch.float32, cuda_policy(True, "triton available"))
    no_triton = CudaOps(torch.device("cpu"), torch.float16, cuda_policy(False, "triton is not installed"))
    for ops in (fp32, no_triton):
        stepper = ops.decode_stepper(cuda_runner(), 16, None)
        assert stepper.key_buckets and "power-of-two buckets" in stepper.reason


def test_bucketed_steps_attend_over_the_bucket_only_and_equal_the_eager_steps(monkeypatch, small_model):
    """Graph mode hands attention ``key_bucket(filled)`` keys, not ``max_length``: one capture per bucket, same
    logits as the ordinary cached decode, and the unwritten positions inside a bucket stay blocked."""
    monkeypatch.setattr(graphs_module, "MIN_KEY_BUCKET", 4)
    total, context = 20, 3
    tokens = torch.randint(20, 400, (2, total), generator=torch.Generator().manual_seed(1))
    positions = generation_positions(context, total, 2, False).expand(2, -1)
    blocked = generation_blocked(context, total)[None, None]
    eager_cache = prefill(small_model, tokens, positions, blocked, context)
    graph_cache = prefill(small_model, tokens, positions, blocked, context)
    attended: list[int] = []
    attention = small_model.ops.attention

    def spy(q, k, v, mask, layer_scale):
        attended.append(k.shape[2])
        assert mask.shape[-1] == k.shape[2]
        return attention(q, k, v, mask, layer_scale)

    captures: list[int] = []

    def counting(step):
        captures.append(len(attended))
        return step

    graph = None
    for col in range(context, total):
        args = (tokens[:, col : col + 1], positions[:, col : col + 1], blocked[..., col : col + 1, : col + 1])
        expected = small_model.forward(*args, eager_cache)
        graph = graph or DecodeGraph(small_model, graph_cache, *args, capture=counting, key_buckets=True)
        attended.clear()
        monkeypatch.setattr(small_model.ops, "attention", spy)
        got = graph.step(graph_cache, *args)
        monkeypatch.setattr(small_model.ops, "attention", attention)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert set(attended) == {key_bucket(col + 1, total, 4)}
    assert graph.captured == [4, 8, 16, 20] and len(captures) == 4
    torch.testing.assert_close(graph_cache.storage, eager_cache.storage)


def test_hip_graphs_are_opt_in(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(torch.version, "hip", "6.2.0")
    assert "opt-in" in graphs_verdict(cuda_runner()).reason
    assert graphs_verdict(cuda_runner(), requested=True)
    monkeypatch.setenv(ENV_VAR, "1")
    assert graphs_verdict(cuda_runner())


def test_the_cpu_decode_path_runs_eagerly(engine):
    assert not graphs_verdict(engine.runner)
    assert isinstance(engine.runner.decode_stepper(16), EagerStepper)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.version.hip is not None, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_captured_decode_on_the_gpu_gives_the_eager_tokens(monkeypatch, dtype):
    gpu = glm_engine.load("glm-tiny", backend="cuda", dtype=dtype)
    prompts = ["Alpha [MASK] beta", "Once upon a time"]
    options = dict(out_seq_length=40, top_k=1, top_p=0.0)
    gpu.runner.cuda_graphs = False
    expected = [r.token_ids for r in gpu.generate(prompts, **options)]
    gpu.runner.cuda_graphs = None
    made: list[GraphedDecoder] = []
    original = torch_cuda_ops.GraphedDecoder

    def recording(runner, verdict, **kwargs):
        made.append(original(runner, verdict, **kwargs))
        return made[-1]

    monkeypatch.setattr(torch_cuda_ops, "GraphedDecoder", recording)
    assert [r.token_ids for r in gpu.generate(prompts, **options)] == expected
    assert made[0].graph_steps > 0 and made[0].captures == 1 and not made[0].fallback, made[0].reason
    # fp32 decode attention is SDPA, which reads every key it is handed: bucketed; fp16 goes to the Triton kernel
    assert made[0].key_buckets == (dtype == "fp32" or not triton_verdict().ok)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.version.hip is not None, reason="needs a CUDA GPU")
def test_a_host_sync_inside_a_real_capture_surfaces_first_and_the_device_captures_again():
    x = torch.ones(4, device="cuda")

    def syncs():
        y = x * 2
        y.sum().item()  # a host sync: not permitted while the stream captures
        return y

    syncs()  # the eager warm-up, as the decoder runs it
    with pytest.raises(CaptureFailed) as info:
        cuda_graph_capture(syncs)
    first = info.value.first
    assert str(info.value).startswith(f"{type(first).__name__}: {first}") and first is not info.value.end_error
    assert not torch.cuda.is_current_stream_capturing()
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    replay = cuda_graph_capture(lambda: x * 3)  # the stream and the allocator are usable: capture works again
    assert torch.equal(replay().cpu(), torch.full((4,), 3.0))
