"""The paged decode kernel (``kernels/triton/paged_decode_attention.py``) and its use by the serving core: without a
GPU the kernel runs in Triton's interpreter on CPU tensors (conftest.py sets ``TRITON_INTERPRET=1``); with one it is
compiled and reads tensors on the GPU (the ``kernel_device`` fixture)."""

from __future__ import annotations

import pytest
import torch
from bounds import max_nmse, nmse

import glm_engine
from glm_engine.backends.cuda.ops import CudaOps
from glm_engine.kernels.triton import triton_verdict
from glm_engine.kernels.triton.configs import DecodeAttentionConfig
from glm_engine.ops.torch_ops import reference_attention
from glm_engine.serving.core import EngineCore
from glm_engine.serving.sampling import SamplingParams
from glm_engine.serving.scheduler import SchedulerLimits

needs_triton = pytest.mark.skipif(not triton_verdict()[0], reason=f"needs triton: {triton_verdict()[1]}")
CONFIG = DecodeAttentionConfig(16, 1, 4, 1)


def _pool_and_rows(dtype: torch.dtype, lengths: list[int], heads: int = 4, groups: int = 2, d: int = 24):
    gen = torch.Generator().manual_seed(0)
    pool_slots = 400
    k_pool = (torch.randn(pool_slots, groups, d, generator=gen) * 2).to(dtype)
    v_pool = torch.randn(pool_slots, groups, d, generator=gen).to(dtype)
    slots = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        slots[i, :n] = torch.randperm(pool_slots, generator=gen)[:n]
    q = (torch.randn(len(lengths), heads, d, generator=gen) * 2).to(dtype)
    return q, k_pool, v_pool, slots, torch.tensor(lengths)


def _on(device: torch.device, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(device) for t in tensors]


def _reference(q, k_pool, v_pool, slots, lengths, row):
    n = int(lengths[row])
    keys = k_pool[slots[row, :n]].transpose(0, 1)[None].double()
    values = v_pool[slots[row, :n]].transpose(0, 1)[None].double()
    unblocked = torch.zeros(1, 1, 1, n, dtype=torch.bool)
    return reference_attention(q[row][None, :, None].double(), keys, values, unblocked, 1.0)[0, :, 0]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_each_sequence_reads_its_own_slots_and_equals_the_reference(dtype, kernel_device):
    """Ragged lengths (1 key, a partial tile, several splits), grouped key/value heads read in place."""
    from glm_engine.kernels.triton.paged_decode_attention import paged_decode_attention

    q, k_pool, v_pool, slots, lengths = _pool_and_rows(dtype, [1, 37, 150])
    on = _on(kernel_device, q, k_pool, v_pool, slots, lengths)
    got = paged_decode_attention(*on, CONFIG, blocks_per_split=2).cpu()
    assert got.shape == q.shape and got.dtype == dtype
    for row in range(3):
        assert nmse(got[row], _reference(q, k_pool, v_pool, slots, lengths, row)) <= max_nmse("attention:decode", dtype)


@needs_triton
def test_a_sequences_result_does_not_depend_on_the_others_in_the_launch(kernel_device):
    from glm_engine.kernels.triton.paged_decode_attention import paged_decode_attention

    q, k_pool, v_pool, slots, lengths = _on(kernel_device, *_pool_and_rows(torch.float32, [150, 37, 90]))
    together = paged_decode_attention(q, k_pool, v_pool, slots, lengths, CONFIG, blocks_per_split=2)
    alone = paged_decode_attention(q[1:2], k_pool, v_pool, slots[1:2, :37], lengths[1:2], CONFIG, blocks_per_split=2)
    assert torch.equal(alone[0], together[1])


@needs_triton
def test_the_cuda_op_table_sends_decode_rows_to_the_paged_kernel_and_says_so(kernel_device):
    ops = CudaOps(kernel_device, torch.float16)
    q, k_pool, v_pool, slots, lengths = _pool_and_rows(torch.float16, [3, 20])
    got = ops.paged_decode_attention(*_on(kernel_device, q, k_pool, v_pool, slots, lengths)).cpu()
    assert "paged: keys read through the block table" in ops.attention_path["decode"]
    assert nmse(got[1], _reference(q, k_pool, v_pool, slots, lengths, 1)) <= max_nmse("attention:decode", torch.float16)


@needs_triton
def test_the_serving_core_runs_its_decode_rows_through_an_op_tables_paged_kernel():
    """Greedy tokens with the kernel equal those of the gathering path; prefill rows still gather."""
    from glm_engine.kernels.triton.paged_decode_attention import paged_decode_attention

    engine = glm_engine.load("chatglm3-tiny", dtype="fp32")
    calls = []

    def kernel(q, k_pool, v_pool, slots, lengths):
        calls.append(q.shape[0])
        return paged_decode_attention(q, k_pool, v_pool, slots, lengths, CONFIG)

    prompts = [[30 + i] * (5 + 7 * i) for i in range(3)]
    params = SamplingParams(max_tokens=6, temperature=0.0)
    outputs = {}
    for fused in (False, True):
        core = EngineCore(engine.runner, 8 << 20, SchedulerLimits(max_tokens=64, chunk=8))
        if fused:
            core.model.ops._ops = _WithKernel(core.model.ops._ops, kernel)
        for i, prompt in enumerate(prompts):
            core.add_request(str(i), prompt, params)
        tokens = {str(i): [] for i in range(3)}
        while core.has_work:
            for out in core.step():
                tokens[out.request_id].append(out.choice.token)
        outputs[fused] = tokens
    assert outputs[True] == outputs[False]
    assert calls and max(calls) == 3  # the three decode rows of a step in one launch


class _WithKernel:
    """An op table with a paged decode kernel added (as the torch.cuda backends' has)."""

    def __init__(self, ops, kernel):
        self._ops = ops
        self.paged_decode_attention = kernel

    def __getattr__(self, name):
        return getattr(self._ops, name)
