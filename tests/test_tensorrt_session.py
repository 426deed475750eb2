"""The TensorRT runner's engine session without TensorRT or a GPU: one execution context switching profiles, the KV
cache bound in place (past from one half, present into the other, no copies), beams reordering it, the runtime kept
alive, and the version and precision checks of the build.

Calls go to ``TensorRTDouble`` (tests/trt_double.py), which reads and writes the addresses it is given like an engine
and enforces the documented rules it implements; the real thing runs only where TensorRT and a GPU are
(tests/test_tensorrt_plan.py)."""

from __future__ import annotations

import gc
import importlib.util
from itertools import pairwise
from types import SimpleNamespace

import pytest
import torch
from trt_double import ALIGN, STRATEGIES, TensorRTDouble, new_kv

from glm_engine.backends.tensorrt import build
from glm_engine.backends.tensorrt import session as session_module
from glm_engine.backends.tensorrt.backend import TensorRTBackend
from glm_engine.backends.tensorrt.build import (
    check_tensorrt_version,
    low_precision_norms,
    tensorrt_version_reason,
    version_tuple,
)
from glm_engine.backends.tensorrt.kv_cache import ALIGN_BYTES, TrtKVCache, aligned_empty
from glm_engine.backends.tensorrt.plan import GraphIO, Limits, binding_plan, buffered_elements, plan_profiles
from glm_engine.backends.tensorrt.session import EngineSession
from glm_engine.errors import BackendError, InputError

IO = GraphIO(2, 2, 4, 16, 64, 1, "fp32", keeps_logits=True)  # layers, kv heads, head size, vocab, context, rows
LIMITS = Limits(max_batch=4, max_seq=32, opt_seq=8)
PROFILES = ["prefill", "decode"]


def session_with(trt: TensorRTDouble) -> EngineSession:
    return EngineSession(trt, b"engine", IO, LIMITS, PROFILES, torch.device("cpu"), torch.float32, 7, "engine")


@pytest.fixture
def trt() -> TensorRTDouble:
    return TensorRTDouble(IO, plan_profiles(IO, LIMITS))


def prompt(batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, IO.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))
    positions = torch.arange(length).expand(batch, length)
    return ids, positions, torch.zeros(batch, 1, length, length, dtype=torch.bool)


def step(session: EngineSession, cache: TrtKVCache, tokens: torch.Tensor) -> torch.Tensor:
    b, past = tokens.shape[0], cache.length
    positions = torch.full((b, 1), past)
    return session.run(tokens[:, None], positions, torch.zeros(b, 1, 1, past + 1, dtype=torch.bool), cache, True)


def expected_keys(tokens: torch.Tensor, layer: int, kind: int) -> torch.Tensor:
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    return new_kv(tokens, positions, layer, kind, IO.num_kv_heads, IO.head_size)


def test_one_context_serves_both_profiles_switching_only_when_the_phase_changes(trt):
    """Two contexts each allocated the larger profile's activation memory; one context switches instead."""
    session = session_with(trt)
    for generation in range(2):
        ids, positions, blocked = prompt(2, 5, seed=generation)
        cache = session.new_cache(2, 12)
        session.run(ids, positions, blocked, cache, last_only=True)
        for _ in range(3):
            step(session, cache, torch.tensor([1, 2]))
    (engine,) = trt.engines
    assert len(engine.contexts) == 1
    assert engine.contexts[0].profile_calls == [0, 1, 0, 1] and session.switches == 4


def generate(session: EngineSession, rows: int = 2) -> TrtKVCache:
    """A prompt, then two decode steps: both profiles run."""
    ids, positions, blocked = prompt(rows, 5)
    cache = session.new_cache(rows, 12)
    session.run(ids, positions, blocked, cache, last_only=True)
    for _ in range(2):
        step(session, cache, torch.arange(rows))
    return cache


@pytest.mark.parametrize("sizes", [(8192, 2048), (2048, 8192)])
def test_the_context_gets_its_activation_memory_once_sized_for_the_larger_profile(sizes):
    trt = TensorRTDouble(IO, plan_profiles(IO, LIMITS), memory_sizes=sizes)
    session = session_with(trt)
    (context,) = trt.engines[0].contexts
    assert context.strategy == STRATEGIES.USER_MANAGED  # no memory of TensorRT's own
    assert context.memory == (session.activations.data_ptr(), max(sizes)) and session.activations.numel() == max(sizes)
    generate(session)
    assert context.memory == (session.activations.data_ptr(), max(sizes)) and not context.errors
    assert (session.activations[: max(sizes)] == 0xAB).all()  # the engine's scratch, not an I/O buffer


def test_activation_memory_for_the_smaller_profile_only_is_refused(trt, monkeypatch):
    monkeypatch.setattr(session_module, "activation_bytes", lambda engine: min(engine.memory_sizes))
    session = session_with(trt)
    ids, positions, blocked = prompt(2, 5)
    with pytest.raises(BackendError, match="refused to run"):
        session.run(ids, positions, blocked, session.new_cache(2, 8), last_only=True)
    assert "profile 0 needs 8192 bytes" in trt.engines[0].contexts[0].errors[-1]


def test_tensorrt_10_0_gets_the_memory_through_its_property():
    trt = TensorRTDouble(IO, plan_profiles(IO, LIMITS), version="10.0.1")
    session = session_with(trt)
    generate(session)
    (context,) = trt.engines[0].contexts
    assert context.device_memory == session.activations.data_ptr() and not context.errors


def test_the_double_refuses_what_tensorrt_refuses(trt):
    """The rules the session is tested against: each refusal below is TensorRT's documented behaviour."""
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # held: the engine needs it
    context = runtime.deserialize_cuda_engine(b"engine").create_execution_context(STRATEGIES.USER_MANAGED)
    buffer = aligned_empty(1 << 16, torch.uint8, "cpu")
    base = buffer.data_ptr()
    assert not context.set_tensor_address("input_ids", base + 8)  # not 256-byte aligned
    assert not context.set_tensor_address("nonexistent", base)
    assert not context.set_input_shape("input_ids", (LIMITS.max_batch + 1, 3))  # outside the profile
    ids, positions, blocked = prompt(1, 3)
    for offset, (name, value) in enumerate(
        {
            "input_ids": ids,
            "position_ids": positions,
            "attention_mask": blocked,
            "logits_to_keep": torch.arange(3),
        }.items()
    ):
        assert context.set_input_shape(name, tuple(value.shape))
        assert context.set_tensor_address(name, base + offset * ALIGN)
        buffer[offset * ALIGN :].view(value.dtype)[: value.numel()].copy_(value.flatten())
    for index, name in enumerate([*IO.kv_names(), "logits", "present.0.key", "present.0.value"]):
        if name.startswith("past"):
            assert context.set_input_shape(name, (1, IO.num_kv_heads, 0, IO.head_size))
        assert context.set_tensor_address(name, base + (8 + index) * ALIGN)
    assert not context.execute_async_v3(0) and "no address for ['present.1.key'" in context.errors[-1]
    context.set_tensor_address("present.1.key", base)  # on top of input_ids
    context.set_tensor_address("present.1.value", base + 40 * ALIGN)
    assert not context.execute_async_v3(0) and "needs 8192 bytes of device memory" in context.errors[-1]
    context.set_device_memory(base + 100, 8192)
    assert context.memory is None and "not 256-byte aligned" in context.errors[-1]
    context.set_device_memory(base + 48 * ALIGN, 8192)
    assert not context.execute_async_v3(0) and context.errors[-1] == "output present.1.key overlaps an input"
    context.set_tensor_address("present.1.key", base + 44 * ALIGN)
    assert context.execute_async_v3(0)
    context.set_optimization_profile_async(1, 0)
    assert not context.execute_async_v3(0) and context.errors[-1] == "an input has no shape"  # a switch forgets them


def test_the_engine_reads_past_from_one_half_and_writes_present_into_the_other(trt):
    session = session_with(trt)
    ids, positions, blocked = prompt(2, 5)
    cache = session.new_cache(2, 12)
    logits = session.run(ids, positions, blocked, cache, last_only=True)
    tokens = [ids]
    for token in ([3, 4], [5, 6], [7, 8]):
        tokens.append(torch.tensor(token)[:, None])
        logits = step(session, cache, tokens[-1][:, 0])
    everything = torch.cat(tokens, dim=1)
    assert cache.length == 8
    for layer in range(IO.num_layers):
        for kind in (0, 1):
            assert torch.equal(cache.past(layer, kind), expected_keys(everything, layer, kind))
    assert torch.allclose(logits[:, 0, 0], expected_keys(everything, 0, 0)[:, 0, :, 0].sum(-1))  # read the past
    calls = trt.engines[0].contexts[0].bound
    for before, after in pairwise(calls):  # what one call wrote as present, the next reads as past
        assert after["past_key_values.1.value"] == before["present.1.value"]
        assert after["present.1.value"] != before["present.1.value"]
    assert not any(name.startswith(("past_key_values", "present")) for name in session.buffers)  # no KV copies


def test_beams_expand_and_reorder_the_bound_cache(trt):
    session = session_with(trt)
    ids, positions, blocked = prompt(1, 4)
    cache = session.new_cache(1, 10)
    session.run(ids, positions, blocked, cache, last_only=True)
    cache = cache.expanded(3)
    step(session, cache, torch.tensor([1, 2, 3]))
    cache.reorder(torch.tensor([2, 2, 0]), shared_prefix=4)
    step(session, cache, torch.tensor([4, 5, 6]))
    rows = [[3, 4], [3, 5], [1, 6]]  # row i: its parent's token (parents 2, 2, 0), then its own
    everything = torch.cat([ids.expand(3, 4), torch.tensor(rows)], dim=1)
    assert torch.equal(cache.past(1, 0), expected_keys(everything, 1, 0))


def test_calls_beyond_the_profiles_or_the_cache_are_refused(trt):
    session = session_with(trt)
    ids, positions, blocked = prompt(5, 3)
    with pytest.raises(InputError, match="--max-batch"):
        session.run(ids, positions, blocked, session.new_cache(5, 8), last_only=True)
    ids, positions, blocked = prompt(2, 6)
    with pytest.raises(InputError, match="KV cache holds 4 tokens"):
        session.run(ids, positions, blocked, session.new_cache(2, 4), last_only=True)


def test_the_runtime_lives_as_long_as_the_engine(trt):
    session = session_with(trt)
    gc.collect()
    assert session.runtime is not None and trt.engines[0].runtime() is session.runtime
    ids, positions, blocked = prompt(1, 3)
    session.run(ids, positions, blocked, session.new_cache(1, 4), last_only=True)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(b"engine")  # its runtime dropped
    gc.collect()
    with pytest.raises(AssertionError, match="Runtime that made this engine was destroyed"):
        engine.create_execution_context().execute_async_v3(0)


def test_an_engine_that_does_not_deserialize_says_to_rebuild(trt):
    with pytest.raises(InputError, match=r"does not load with TensorRT 10\.3\.0"):
        EngineSession(trt, b"other", IO, LIMITS, PROFILES, torch.device("cpu"), torch.float32, 0, "e/model.engine")


def test_kv_slots_start_on_tensorrts_address_alignment():
    cache = TrtKVCache(3, 3, 2, 7, 5, torch.float16, "cpu")  # 210 elements per slot: not a multiple of 128
    base = cache.halves.data_ptr()
    starts = {cache.present(layer, kind, 1).data_ptr() - base for layer in range(3) for kind in (0, 1)}
    assert len(starts) == 6 and all(offset % ALIGN_BYTES == 0 for offset in starts)
    assert cache.halves.numel() == 2 * 3 * 2 * 256  # two halves: the only copies of the cache


def test_only_the_inputs_and_the_logits_get_runner_buffers():
    plan = binding_plan(IO, LIMITS)
    b, s = LIMITS.max_batch, LIMITS.max_seq
    assert buffered_elements(plan) == b * s + b * s + b * s * s + s + b * s * IO.vocab_size
    assert {x.role for x in plan if x.in_cache} == {"past", "present"}


def test_tensorrt_older_than_10_is_refused_with_what_to_install():
    int4 = {"quantization": {"bits": 4, "target": "tensorrt"}}
    with pytest.raises(BackendError, match=r"INT4 weights .* need TensorRT 10\.0 or newer; install tensorrt>=10"):
        check_tensorrt_version("9.3.0.1", int4, "folder")
    with pytest.raises(BackendError, match=r"TensorRT 8\.6\.1 cannot build or run folder"):
        check_tensorrt_version("8.6.1", {"quantization": None}, "folder")
    check_tensorrt_version("10.0.1.6", int4, "folder")
    assert version_tuple("10.8.0.post1") == (10, 8, 0) and version_tuple("10.12.0.36") == (10, 12, 0, 36)


def test_the_backend_verdict_names_the_installed_and_the_needed_tensorrt(monkeypatch):
    assert tensorrt_version_reason("10.0.1.6") is None and tensorrt_version_reason(None) is None
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "tensorrt" else real(name, *a)
    )
    monkeypatch.setattr(build, "installed_tensorrt_version", lambda: "8.6.1")
    verdict = TensorRTBackend().availability()
    assert not verdict
    assert "TensorRT 8.6.1 is installed" in verdict.reason and "needs TensorRT 10.0 or newer" in verdict.reason
    assert "INT4" in verdict.reason


def test_the_build_refuses_a_network_that_normalizes_below_fp32():
    trt = SimpleNamespace(LayerType=SimpleNamespace(NORMALIZATION="norm", ELEMENTWISE="add"), float32="f32")

    def layer(name: str, kind: str, dtype: str) -> SimpleNamespace:
        return SimpleNamespace(name=name, type=kind, get_input=lambda i: SimpleNamespace(dtype=dtype))

    layers = [layer("ln0", "norm", "f32"), layer("add", "add", "f16"), layer("ln1", "norm", "f16")]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    assert low_precision_norms(trt, network) == ["ln1"]
