"""The serving core (``glm_engine.serving``): batch-invariant products, per-sequence layouts, continuous batching over
paged KV blocks, preemption, cancellation and per-request sampling, on the CPU in fp32 with tiny models of every
family. Outputs are compared with the engine's own generation path (``decode_aligned``) and with themselves alone."""

from __future__ import annotations

import pytest
import torch

import glm_engine
from glm_engine.errors import InputError
from glm_engine.generation.decode import decode_aligned
from glm_engine.generation.strategies import BaseStrategy
from glm_engine.serving.core import EngineCore
from glm_engine.serving.kv_blocks import BlockPool
from glm_engine.serving.row_tiled import RowTiledOps
from glm_engine.serving.sampling import SamplingParams
from glm_engine.serving.scheduler import SchedulerLimits

PRESETS = ["glm-tiny", "chatglm-tiny", "chatglm3-tiny", "glm4-0414-tiny"]
LIMITS = SchedulerLimits(max_tokens=48, chunk=8, max_running=8)
GREEDY = SamplingParams(max_tokens=10, temperature=0.0, logprobs=0)


@pytest.fixture(scope="module", params=PRESETS)
def engine(request):
    return glm_engine.load(request.param, dtype="fp32")


def _prompts(engine, lengths=(5, 13, 21, 3, 30)) -> list[list[int]]:
    """Random text ids ending as the family's generation expects (GLM: ``[gMASK] sop``)."""
    runner = engine.runner
    tokens = runner.family.blank_tokens(runner.config)
    gen = torch.Generator().manual_seed(7)
    text = torch.tensor(list(tokens.text))
    prompts = [text[torch.randint(len(text), (n,), generator=gen)].tolist() for n in lengths]
    try:
        runner.family.sequence_layout(runner.config, prompts[0])
        return prompts
    except InputError:  # a family whose prompts end with [gMASK] sop
        return [p + [tokens.gmask, tokens.sop] for p in prompts]


def _run(core: EngineCore, requests: dict[str, tuple[list[int], SamplingParams]], stagger: int = 0):
    """Tokens and logprobs per request; with ``stagger`` a new request joins every ``stagger`` steps."""
    queue = list(requests.items())
    out: dict[str, list[tuple[int, float | None]]] = {rid: [] for rid in requests}
    reasons = {}
    steps = 0
    while queue or core.has_work:
        if queue and (stagger == 0 or steps % stagger == 0):
            for rid, (prompt, params) in queue[: 1 if stagger else len(queue)]:
                core.add_request(rid, prompt, params)
            queue = queue[1:] if stagger else []
        for o in core.step():
            out[o.request_id].append((o.choice.token, o.choice.logprob))
            if o.finished:
                reasons[o.request_id] = o.finish_reason
        steps += 1
        assert steps < 2000
    return out, reasons


def _core(engine, kv_bytes=4 << 20, limits=LIMITS, **kw) -> EngineCore:
    return EngineCore(engine.runner, kv_bytes, limits, **kw)


def test_a_rows_product_in_a_fixed_tile_does_not_depend_on_the_other_rows():
    """The BLAS property batch invariance rests on, checked on the CPU this runs on."""
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(96, 64, generator=gen), torch.randn(96, generator=gen)
    ops = RowTiledOps(glm_engine.load("glm-tiny", dtype="fp32").runner.ops)
    rows = torch.randn(11, 64, generator=gen)
    together = ops.linear(rows, weight, bias)
    for i in range(rows.shape[0]):
        assert torch.equal(ops.linear(rows[i : i + 1], weight, bias)[0], together[i])


def test_each_sequence_layout_is_its_generation_batch_read_token_by_token(engine):
    runner = engine.runner
    for prompt in _prompts(engine, (4, 9)):
        batch = runner.family.generation_batch(runner.config, [prompt], [7])
        layout = runner.family.sequence_layout(runner.config, prompt)
        total = batch.position_ids.shape[-1]
        assert torch.equal(layout.positions(0, total), batch.position_ids[0])
        assert torch.equal(layout.blocked(0, total), batch.blocked[0, 0])
        assert torch.equal(layout.blocked(3, total), batch.blocked[0, 0, 3:, :total])


def test_greedy_tokens_equal_the_engines_own_generation(engine):
    runner = engine.runner
    prompts = _prompts(engine)
    out, reasons = _run(_core(engine), {str(i): (p, GREEDY) for i, p in enumerate(prompts)})
    for i, prompt in enumerate(prompts):
        batch = runner.family.generation_batch(runner.config, [prompt], [GREEDY.max_tokens])
        strategy = BaseStrategy(top_k=1)
        with torch.inference_mode():
            (reference,) = decode_aligned(runner, batch, [prompt], [GREEDY.max_tokens], strategy, 0)
        assert [t for t, _ in out[str(i)]] == reference[0]
        assert reasons[str(i)] == "length"


def test_under_load_each_request_gets_exactly_its_output_alone(engine):
    """Bit for bit (token and log-probability) in fp32, with requests joining mid-flight and prompts in chunks."""
    prompts = _prompts(engine)
    core = _core(engine)
    alone = {}
    for i, prompt in enumerate(prompts):
        alone.update(_run(core, {str(i): (prompt, GREEDY)})[0])
    together, _ = _run(core, {str(i): (p, GREEDY) for i, p in enumerate(prompts)})
    staggered, _ = _run(core, {str(i): (p, GREEDY) for i, p in enumerate(prompts)}, stagger=3)
    assert together == alone and staggered == alone
    assert core.stats().blocks_used == 0


def test_seeded_sampling_is_per_request(engine):
    prompts = _prompts(engine, (6, 11, 4))
    params = [SamplingParams(max_tokens=8, temperature=0.9, top_p=0.9, top_k=50, seed=s) for s in (1, 2, 3)]
    core = _core(engine)
    alone = {}
    for i, (p, sp) in enumerate(zip(prompts, params, strict=True)):
        alone.update(_run(core, {str(i): (p, sp)})[0])
    together, _ = _run(core, {str(i): (p, sp) for i, (p, sp) in enumerate(zip(prompts, params, strict=True))})
    assert together == alone


def test_a_small_pool_preempts_and_recomputes_without_losing_a_request():
    engine = glm_engine.load("glm4-0414-tiny", dtype="fp32")
    prompts = _prompts(engine, (20, 20, 20, 20))
    per_block = BlockPool.bytes_per_block(2, 2, 16, 16, torch.float32)
    params = SamplingParams(max_tokens=20, temperature=0.0)
    reference, _ = _run(_core(engine), {str(i): (p, params) for i, p in enumerate(prompts)})
    small = _core(engine, kv_bytes=6 * per_block)  # 96 token slots for four sequences of 40
    out, reasons = _run(small, {str(i): (p, params) for i, p in enumerate(prompts)})
    assert small.stats().preemptions > 0
    assert set(reasons.values()) == {"length"} and all(len(v) == 20 for v in out.values())
    assert {k: [t for t, _ in v] for k, v in out.items()} == {k: [t for t, _ in v] for k, v in reference.items()}
    assert small.stats().blocks_used == 0


def test_cancelling_frees_the_blocks_at_once():
    engine = glm_engine.load("chatglm3-tiny", dtype="fp32")
    core = _core(engine)
    core.add_request("a", _prompts(engine, (40,))[0], SamplingParams(max_tokens=50, temperature=0.0))
    core.step()
    assert core.stats().blocks_used == core.pool.blocks_for(8) and core.stats().running == 1
    assert core.abort("a") and not core.abort("a")
    assert core.stats() == core.stats().__class__(0, 0, 0, core.pool.num_blocks, 16, 0)
    assert not core.has_work and core.step() == []


def test_stop_tokens_and_strings_end_a_request():
    engine = glm_engine.load("chatglm3-tiny", dtype="fp32")
    prompt = _prompts(engine, (9,))[0]
    (tokens,) = _run(_core(engine), {"a": (prompt, GREEDY)})[0].values()
    third = tokens[2][0]
    out, reasons = _run(
        _core(engine), {"a": (prompt, SamplingParams(max_tokens=10, temperature=0.0, stop_token_ids=(third,)))}
    )
    assert [t for t, _ in out["a"]] == [t for t, _ in tokens[:3]] and reasons["a"] == "stop"
    decode = engine.tokenizer.decode
    ids = [t for t, _ in tokens]
    second_text = decode(ids[:2])[len(decode(ids[:1])) :].strip()  # the text only the second token brings
    assert second_text and second_text not in decode(ids[:1])
    core = _core(engine, detokenize=decode)
    out, reasons = _run(core, {"a": (prompt, SamplingParams(max_tokens=10, temperature=0.0, stop=(second_text,)))})
    assert reasons["a"] == "stop" and [t for t, _ in out["a"]] == ids[:2]
    ended, reasons = _run(_core(engine), {"a": (prompt, GREEDY)})
    assert reasons["a"] == "length" and len(ended["a"]) == GREEDY.max_tokens


def test_requests_that_can_never_fit_are_refused_with_the_numbers():
    engine = glm_engine.load("chatglm3-tiny", dtype="fp32")
    per_block = BlockPool.bytes_per_block(2, 2, 16, 16, torch.float32)
    core = _core(engine, kv_bytes=2 * per_block)
    with pytest.raises(InputError, match="needs 36 cached tokens; the KV cache holds 32"):
        core.add_request("a", [30] * 26, GREEDY)
    with pytest.raises(InputError, match="takes at most 511"):
        core.add_request("b", [30] * 600, GREEDY)
    with pytest.raises(InputError, match="empty"):
        core.add_request("c", [], GREEDY)
    core.add_request("d", [30] * 4, GREEDY)
    with pytest.raises(InputError, match="already running"):
        core.add_request("d", [30] * 4, GREEDY)
    with pytest.raises(InputError, match="holds no block"):
        _core(engine, kv_bytes=per_block - 1)
    exported = type("Graph", (), {"capabilities": type("C", (), {"op_level": False, "tensor_parallel": 1})()})()
    with pytest.raises(InputError, match="op-level backends"):
        EngineCore(exported, 1 << 20)
    with pytest.raises(InputError, match="max_tokens must be at least 1, got 0; temperature must be >= 0, got -1"):
        SamplingParams(max_tokens=0, temperature=-1)


@pytest.mark.parametrize("prompt", ["Tsinghua University is located in [MASK].", "The capital of China is"])
def test_glm_blank_filling_rounds_equal_the_engines_generate(prompt):
    """GLM-130B's completion through the core (each blank one generation) fills as ``Engine.generate`` does."""
    engine = glm_engine.load("glm-tiny", dtype="fp32")
    runner, new_tokens = engine.runner, 6
    core = _core(engine)
    rounds = runner.family.serving_completion(runner.config, engine.tokenizer, prompt)
    serving = next(rounds)
    core.add_request(
        "a",
        serving.ids,
        SamplingParams(max_tokens=new_tokens, temperature=0.0),
        serving.end_token_ids,
        engine.banned_tokens,
    )
    generated = []
    while core.has_work:
        generated += [o.choice.token for o in core.step()]
    with pytest.raises(StopIteration) as done:
        rounds.send(generated)
    (reference,) = engine.generate(prompt, top_k=1, top_p=0.0, out_seq_length=len(serving.ids) + new_tokens)
    if "[MASK]" in prompt:
        assert done.value.value == reference.answers[0]
    else:
        assert done.value.value == reference.blanks[0][0]
