"""Grouped-query attention, RMSNorm and SwiGLU on the backends without an accelerator.

- The Triton decode kernel (Triton's interpreter on CPU tensors) reads a grouped KV cache in place: query head ``i``
  reads key/value head ``i // (heads / groups)``, for 1, 2 and ``heads`` groups, held to the conformance suite's
  attention bounds against the float64 reference; also as a CUDA-graph step hands it the cache (whole buffer, the
  tail blocked).
- The ``torch.cuda`` table reads grouped heads through SDPA's ``enable_gqa`` exactly when torch's dispatcher says a
  fused kernel takes the call, else repeats them, and records which.
- The CPU table's ``enable_gqa`` path equals repeating the heads first, bit for bit, on the installed torch.
- Every backend answers ``supports()`` for the new ops, with reasons where it says no.

What a GPU computes is only checked by the tests marked ``needs_gpu``, which skip here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bounds import max_nmse, nmse

import glm_engine.backends.cpu.ops as cpu_ops
import glm_engine.backends.torch_cuda.attention as cuda_attention
from glm_engine.backends.base import BackendKind
from glm_engine.backends.cpu.ops import CpuOps
from glm_engine.backends.cuda.ops import CudaOps
from glm_engine.backends.registry import REGISTRY
from glm_engine.backends.rocm_dcu.backend import RocmDcuBackend
from glm_engine.backends.torch_cuda.attention import (
    AttentionPath,
    AttentionPolicy,
    grouped_sdpa,
    grouped_sdpa_verdict,
)
from glm_engine.exported.ops import unexported_reason
from glm_engine.generation.masks import generation_blocked
from glm_engine.kernels.triton import triton_verdict
from glm_engine.kernels.triton.configs import DecodeAttentionConfig, choose_decode_attention_config
from glm_engine.ops.interface import Op, expand_groups
from glm_engine.ops.torch_ops import reference_attention

needs_triton = pytest.mark.skipif(not triton_verdict()[0], reason=f"needs triton: {triton_verdict()[1]}")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/HIP GPU (torch.cuda.is_available())")

HEADS = 8
GROUPS = [1, 2, HEADS]  # multi-query, grouped, one key/value head per query head
NEW_OPS = (Op.RMSNORM, Op.SWIGLU, Op.GROUPED_ATTENTION)


def grouped_qkv(b: int, h: int, g: int, sq: int, sk: int, d: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = (torch.randn(b, h, sq, d, generator=gen) * 2).to(dtype)
    k, v = ((torch.randn(b, g, sk, d, generator=gen) * 2).to(dtype) for _ in range(2))
    return q, k, v


def random_blocked(b: int, sk: int, seed: int = 1) -> torch.Tensor:
    blocked = torch.rand(b, 1, 1, sk, generator=torch.Generator().manual_seed(seed)) < 0.4
    blocked[..., 0] = False  # every row keeps a key (the contract)
    return blocked


def reference(q, k, v, blocked, layer_scale=1.0):
    return reference_attention(q.double(), k.double(), v.double(), blocked, layer_scale)


def wrongly_grouped(k: torch.Tensor, heads: int) -> torch.Tensor:
    """Key/value heads handed out round-robin (query head i reads head i % g): the mistake the tests must catch."""
    return k.repeat(1, heads // k.shape[1], 1, 1)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("groups", GROUPS, ids=[f"g{g}" for g in GROUPS])
def test_decode_kernel_reads_grouped_heads_in_place(groups, dtype, kernel_device):
    from glm_engine.kernels.triton.decode_attention import decode_attention

    q, k, v = grouped_qkv(2, HEADS, groups, 1, 70, 16, dtype)
    blocked = random_blocked(2, 70)
    on = [t.to(kernel_device) for t in (q, k, v, blocked)]
    got = decode_attention(*on, DecodeAttentionConfig(16, 3, 4, 1)).cpu()
    assert got.shape == (2, HEADS, 1, 16) and got.dtype == dtype
    assert nmse(got, reference(q, k, v, blocked, 7.0)) <= max_nmse("grouped_attention:decode", dtype)
    if 1 < groups < HEADS:  # the comparison can fail: another grouping of the same heads is far off
        wrong = reference(q, wrongly_grouped(k, HEADS), wrongly_grouped(v, HEADS), blocked)
        assert nmse(got, wrong) > 1e-2


@needs_triton
def test_decode_kernel_refuses_key_value_heads_that_do_not_divide_the_query_heads(kernel_device):
    from glm_engine.kernels.triton.decode_attention import decode_attention

    q, k, v = (t.to(kernel_device) for t in grouped_qkv(1, HEADS, 3, 1, 16, 16, torch.float16))
    with pytest.raises(ValueError, match="divide the 8 query heads"):
        decode_attention(q, k, v, random_blocked(1, 16).to(kernel_device), DecodeAttentionConfig(16, 1, 4, 1))


@needs_triton
@pytest.mark.parametrize("groups", GROUPS, ids=[f"g{g}" for g in GROUPS])
def test_cuda_decode_step_reads_the_whole_grouped_cache_as_a_graph_step_hands_it_over(groups, kernel_device):
    """A captured decode step attends over the preallocated cache (a strided view of ``[layers, 2, b, g, max, d]``
    storage) with the unwritten tail blocked: same output as the filled prefix alone, no copy of the cache."""
    ops = CudaOps(kernel_device, torch.float16)
    storage = torch.randn(2, 2, 2, groups, 96, 16).half()
    storage[1, :, :, :, 40:] = 1e4  # unwritten positions hold garbage; the mask must keep them out
    k, v = storage[1, 0], storage[1, 1]
    q = torch.randn(2, HEADS, 1, 16).half()
    blocked = torch.zeros(1, 1, 1, 96, dtype=torch.bool)
    blocked[..., 40:] = True
    on_device = storage.to(kernel_device)  # the same strided views of storage on the kernel's device
    got = ops.attention(q.to(kernel_device), on_device[1, 0], on_device[1, 1], blocked.to(kernel_device), 1.0).cpu()
    expected = reference(q, k[:, :, :40], v[:, :, :40], blocked[..., :40])
    assert nmse(got, expected) <= max_nmse("grouped_attention:decode", torch.float16)
    path = ops.attention_path["decode"]
    assert path.startswith("triton_decode") and (("read in place" in path) == (groups != HEADS))


def test_cuda_table_prefill_reads_grouped_heads_through_sdpa_enable_gqa():
    ops = CudaOps(torch.device("cpu"), torch.float32)
    q, k, v = grouped_qkv(2, HEADS, 2, 9, 9, 16, torch.float32)
    blocked = generation_blocked(5, 9)[None, None]
    got = ops.attention(q, k, v, blocked, 3.0)
    assert nmse(got, reference(q, k, v, blocked, 3.0)) <= max_nmse("grouped_attention:prefill", torch.float32)
    assert ops.attention_path["prefill"].startswith("sdpa") and "enable_gqa" in ops.attention_path["prefill"]


class _FusedChecks:
    """Stands in for torch.backends.cuda's ``can_use_*_attention``: answers as told, records what it was asked."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, accepts: set[str]) -> None:
        self.asked: list[object] = []
        for name, attr in cuda_attention.FUSED_SDPA_CHECKS:
            monkeypatch.setattr(torch.backends.cuda, attr, self._check(name in accepts), raising=False)

    def _check(self, answer: bool):
        def check(params, debug=False):
            self.asked.append(params)
            return answer

        return check


def test_grouped_sdpa_is_native_exactly_when_torchs_dispatcher_has_a_fused_kernel_for_it(monkeypatch):
    """On a device (meta tensors here) grouped heads go to SDPA as they are only if a fused kernel would take them
    with ``enable_gqa``; otherwise they are repeated, and the reason says why."""
    q, k, v = (torch.empty(1, h, 5, 64, dtype=torch.float16, device="meta") for h in (HEADS, 2, 2))
    mask = torch.ones(1, 1, 5, 5, dtype=torch.bool, device="meta")
    none = _FusedChecks(monkeypatch, accepts=set())
    native, why = grouped_sdpa_verdict(q, k, v, mask)
    assert not native and "repeated" in why and "no fused SDPA kernel" in why
    assert none.asked and all(p.enable_gqa for p in none.asked)
    _FusedChecks(monkeypatch, accepts={"memory-efficient"})
    native, why = grouped_sdpa_verdict(q, k, v, mask)
    assert native and "memory-efficient" in why


def test_without_enable_gqa_in_torch_the_heads_are_repeated_with_the_reason(monkeypatch):
    monkeypatch.setattr(cuda_attention, "sdpa_takes_enable_gqa", lambda: False)
    q, k, v = grouped_qkv(1, HEADS, 2, 6, 6, 16, torch.float32)
    blocked = generation_blocked(3, 6)[None, None]
    out, note = grouped_sdpa(q, k, v, blocked)
    assert "has no enable_gqa" in note
    kk, vv = expand_groups(k, v, HEADS)
    assert torch.equal(out, F.scaled_dot_product_attention(q, kk, vv, attn_mask=~blocked, scale=16**-0.5))


def test_reference_path_repeats_grouped_heads_and_says_so():
    policy = AttentionPolicy(AttentionPath.REFERENCE, "no fused kernels", AttentionPath.REFERENCE, "no kernels")
    ops = CudaOps(torch.device("cpu"), torch.float32, policy)
    q, k, v = grouped_qkv(1, HEADS, 2, 7, 7, 8, torch.float32)
    blocked = generation_blocked(4, 7)[None, None]
    assert torch.equal(ops.attention(q, k, v, blocked, 2.0), reference_attention(q, k, v, blocked, 2.0))
    assert "repeated" in ops.attention_path["prefill"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("sq", "sk"), [(9, 9), (1, 257)], ids=["prefill", "decode"])
@pytest.mark.parametrize("groups", [1, 2], ids=["g1", "g2"])
def test_cpu_reads_grouped_heads_in_place_equal_to_repeating_them_bit_for_bit(monkeypatch, groups, sq, sk, dtype):
    """The CPU table never repeats grouped heads in fp32/bf16 (``expand_groups`` would raise here), and its output
    equals SDPA over repeated heads exactly: the equality the CPU backend's use of ``enable_gqa`` rests on."""
    q, k, v = grouped_qkv(2, HEADS, groups, sq, sk, 32, dtype)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # [b, s, h, d] storage, as the graph hands it over
    blocked = generation_blocked(sk - sq + 1, sk)[None, None, -sq:].expand(2, -1, -1, -1).clone()
    blocked[1, ..., :3] = True  # left padding in row 1; a padded query still sees itself (the contract)
    rows = torch.arange(max(0, 3 - (sk - sq)))
    blocked[1, 0, rows, rows + sk - sq] = False
    kk, vv = expand_groups(k, v, HEADS)
    expected = F.scaled_dot_product_attention(q, kk, vv, attn_mask=~blocked)

    def no_copies(*args):
        raise AssertionError("the CPU table repeated grouped key/value heads")

    monkeypatch.setattr(cpu_ops, "expand_groups", no_copies)
    got = CpuOps(torch.device("cpu"), dtype).attention(q, k, v, blocked, 5.0)
    assert torch.equal(got, expected)
    check = f"grouped_attention:{'decode' if sq == 1 else 'prefill'}"
    assert nmse(got, reference(q, k, v, blocked, 5.0)) <= max_nmse(check, dtype)


def test_cpu_fp16_runs_the_reference_path_over_repeated_heads():
    q, k, v = grouped_qkv(1, HEADS, 2, 5, 5, 16, torch.float16)
    blocked = generation_blocked(3, 5)[None, None]
    got = CpuOps(torch.device("cpu"), torch.float16).attention(q, k, v, blocked, 4.0)
    assert torch.equal(got, reference_attention(q, k, v, blocked, 4.0))


@pytest.mark.parametrize("name", REGISTRY.names())
def test_every_backend_answers_the_new_ops_with_a_reason_when_it_cannot(name):
    backend = REGISTRY.get(name)
    for op in NEW_OPS:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            verdict = backend.supports(op, dtype)
            assert verdict.ok or verdict.reason, (name, op, dtype)
            if backend.kind is BackendKind.GRAPH_LEVEL:  # the ONNX export emits them, so exported graphs hold them
                assert unexported_reason(op) == "" and "exported graphs" not in verdict.reason
            if dtype in backend.supported_dtypes():
                assert verdict.ok, (name, op, dtype, verdict.reason)


def test_cpu_and_torch_cuda_backends_say_how_grouped_heads_are_read():
    cpu = REGISTRY.get("cpu")
    assert "enable_gqa" in cpu.supports(Op.GROUPED_ATTENTION, torch.float32).reason
    assert "repeated" in cpu.supports(Op.GROUPED_ATTENTION, torch.float16).reason
    cuda_note = REGISTRY.get("cuda").supports(Op.GROUPED_ATTENTION, torch.float16).reason
    assert "prefill: sdpa" in cuda_note and "decode: triton_decode, grouped heads read in place" in cuda_note
    rocm_note = RocmDcuBackend().supports(Op.GROUPED_ATTENTION, torch.float16).reason  # no HIP device: no fused SDPA
    assert "prefill: reference, key/value heads repeated" in rocm_note and "decode: triton_decode" in rocm_note


@needs_gpu
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_decode_kernel_on_the_gpu_at_glm4_shapes(dtype):
    """Compiled kernel, real tiles: batch 2, 32 query heads over 2 key/value heads of 128, 2048 cached positions."""
    from glm_engine.kernels.triton.decode_attention import decode_attention

    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    q, k, v = (t.cuda() for t in grouped_qkv(2, 32, 2, 1, 2048, 128, dtype))
    blocked = random_blocked(2, 2048).cuda()
    props = torch.cuda.get_device_properties(0)
    platform = "hip" if torch.version.hip else "cuda"
    config = choose_decode_attention_config(64, 2048, sm_count=props.multi_processor_count, platform=platform)
    got = decode_attention(q, k, v, blocked, config)
    expected = reference(q.cpu(), k.cpu(), v.cpu(), blocked.cpu())
    assert nmse(got.cpu(), expected) <= max_nmse("grouped_attention:decode", dtype)


@needs_gpu
def test_grouped_prefill_on_the_gpu_matches_the_reference_and_names_its_path():
    q, k, v = (t.cuda() for t in grouped_qkv(2, 32, 2, 300, 300, 128, torch.float16))
    blocked = generation_blocked(200, 300)[None, None].cuda()
    out, note = grouped_sdpa(q, k, v, blocked)
    expected = reference(q.cpu(), k.cpu(), v.cpu(), blocked.cpu())
    assert nmse(out.cpu(), expected) <= max_nmse("grouped_attention:prefill", torch.float16)
    assert "read in place" in note or "repeated" in note
