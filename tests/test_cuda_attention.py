"""Attention on the torch.cuda backends: the Triton decode kernel, SDPA's formulation and the per-call choice.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (conftest.py sets ``TRITON_INTERPRET=1``; with
one, the kernel tests put their tensors on the GPU: the ``kernel_device`` fixture) and SDPA runs on the CPU, both
against ``reference_attention`` in float64: that checks the semantics (mask, scale, split merging, layer scaling
being a no-op) while the GPU-only test checks the compiled kernel at real shapes. Which SDPA kernel a device call may
use, and what a failure does, is checked on meta tensors against a stand-in for torch's dispatcher (``FakeSdpa``).
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from torch.nn.attention import SDPBackend

import glm_engine.backends.torch_cuda.attention as cuda_attention
from glm_engine.backends.cuda.ops import CudaOps, cuda_policy
from glm_engine.backends.torch_cuda.attention import (
    ENV_CUDNN,
    AttentionPath,
    AttentionPolicy,
    run_sdpa,
    sdpa_attention,
    sdpa_kernels,
)
from glm_engine.errors import BackendError
from glm_engine.generation.masks import generation_blocked
from glm_engine.kernels.triton import triton_verdict
from glm_engine.kernels.triton.configs import (
    MAX_ATTENTION_SPLITS,
    DecodeAttentionConfig,
    choose_decode_attention_config,
)
from glm_engine.ops.torch_ops import reference_attention

needs_triton = pytest.mark.skipif(not triton_verdict()[0], reason=f"needs triton: {triton_verdict()[1]}")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/HIP GPU (torch.cuda.is_available())")

# NMSE against float64, bounded by the conformance suite's attention rows (tests/bounds.py): the output's rounding to
# the activation dtype. A missing mask or a wrong scale gives NMSE of order 1e-2..1.


def nmse(got: torch.Tensor, expected: torch.Tensor) -> float:
    from bounds import nmse as suite_nmse  # imported here: the import block above is the backend move's

    return suite_nmse(got, expected)


def max_nmse(check: str, dtype: torch.dtype) -> float:
    from bounds import max_nmse as suite_bound

    return suite_bound(check, dtype)


def qkv(b: int, h: int, sk: int, d: int, dtype: torch.dtype, sq: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(b, h, s, d, generator=g) * 2).to(dtype) for s in (sq, sk, sk))


def random_blocked(b: int, sk: int, seed: int = 1) -> torch.Tensor:
    blocked = torch.rand(b, 1, 1, sk, generator=torch.Generator().manual_seed(seed)) < 0.4
    blocked[..., 0] = False  # every row keeps a key (the contract)
    return blocked


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(("b", "h", "sk", "d", "splits"), [(2, 3, 150, 16, 3), (1, 2, 37, 24, 1), (3, 1, 64, 32, 8)])
def test_decode_kernel_matches_the_reference(b, h, sk, d, splits, dtype, kernel_device):
    """Ragged last tile, head_dim not a power of two, more splits than tiles: all equal the float64 reference."""
    from glm_engine.kernels.triton.decode_attention import decode_attention

    q, k, v = qkv(b, h, sk, d, dtype)
    blocked = random_blocked(b, sk)
    on = [t.to(kernel_device) for t in (q, k, v, blocked)]
    got = decode_attention(*on, DecodeAttentionConfig(16, splits, 4, 1)).cpu()
    expected = reference_attention(q.double(), k.double(), v.double(), blocked, 7.0)
    assert got.shape == (b, h, 1, d) and got.dtype == dtype
    assert nmse(got, expected) <= max_nmse("attention:decode", dtype)


@needs_triton
def test_decode_kernel_honours_the_mask_and_skips_blocked_tiles(kernel_device):
    """Keys after the current length blocked (the CUDA-graph layout) give the same output as a cache cut there, and
    a blocked key holding huge values changes nothing."""
    from glm_engine.kernels.triton.decode_attention import decode_attention

    q, k, v = qkv(2, 2, 96, 16, torch.float16, seed=3)
    blocked = torch.zeros(1, 1, 1, 96, dtype=torch.bool)
    blocked[..., 40:] = True
    k[:, :, 70], v[:, :, 70] = 1e4, 1e4  # poison inside a blocked tile and a blocked position
    config = DecodeAttentionConfig(16, 2, 4, 1)

    def kernel(q, k, v, blocked):
        return decode_attention(*(t.to(kernel_device) for t in (q, k, v, blocked)), config).cpu()

    full = kernel(q, k, v, blocked)
    cut = kernel(q, k[:, :, :40], v[:, :, :40], blocked[..., :40])
    assert torch.isfinite(full).all()
    kept = [t[:, :, :40].double() for t in (k, v)]
    expected = reference_attention(q.double(), *kept, blocked[..., :40], 1.0)
    for got in (full, cut):
        assert nmse(got, expected) <= max_nmse("attention:decode", torch.float16)
    unmasked = kernel(q, k, v, torch.zeros_like(blocked))
    assert nmse(unmasked, full.double()) > 1e-2  # the mask matters: the check above could fail


@needs_triton
def test_decode_kernel_reads_strided_cache_views(kernel_device):
    """k, v as the KV cache hands them out: slices of [layers, 2, b, h, max, d] storage, not contiguous."""
    from glm_engine.kernels.triton.decode_attention import decode_attention

    storage = torch.randn(2, 2, 2, 3, 80, 16).half()
    k, v = storage[1, 0, :, :, :50], storage[1, 1, :, :, :50]
    q = torch.randn(2, 3, 1, 16).half()
    blocked = random_blocked(2, 50)
    on_device = storage.to(kernel_device)  # the same strided views of storage on the kernel's device
    k_on, v_on = on_device[1, 0, :, :, :50], on_device[1, 1, :, :, :50]
    config = DecodeAttentionConfig(16, 2, 4, 1)
    got = decode_attention(q.to(kernel_device), k_on, v_on, blocked.to(kernel_device), config).cpu()
    expected = reference_attention(q.double(), k.double(), v.double(), blocked, 1.0)
    assert nmse(got, expected) <= max_nmse("attention:decode", torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sdpa_formulation_equals_the_reference_for_any_layer_scale(dtype):
    """SDPA with the bool mask and 1/sqrt(d) equals the layer-scaled, -10000-filled fp32 softmax: on the GLM
    prefix-bidirectional mask, for layer scales 1 and 70."""
    q, k, v = qkv(2, 3, 12, 16, dtype, sq=12)
    blocked = generation_blocked(7, 12)[None, None]
    got = sdpa_attention(q, k, v, blocked)
    for layer_scale in (1.0, 70.0):
        expected = reference_attention(q.double(), k.double(), v.double(), blocked, layer_scale)
        assert nmse(got, expected) <= max_nmse("attention:prefill", torch.float32)  # float64 too: at least as exact
    assert nmse(sdpa_attention(q, k, v, torch.zeros_like(blocked)), got.double()) > 1e-4  # the mask is applied


def test_policy_sends_one_row_fp16_to_the_kernel_and_the_rest_to_sdpa():
    policy = cuda_policy(True, "triton available")
    assert policy.choose(1, 128, torch.float16)[0] is AttentionPath.TRITON_DECODE
    assert policy.choose(1, 128, torch.bfloat16)[0] is AttentionPath.TRITON_DECODE
    assert policy.choose(7, 128, torch.float16)[0] is AttentionPath.SDPA
    path, why = policy.choose(1, 128, torch.float32)
    assert path is AttentionPath.SDPA and "fp16/bf16" in why
    path, why = policy.choose(1, 512, torch.float16)
    assert path is AttentionPath.SDPA and "head_dim 512" in why
    no_triton = cuda_policy(False, "triton is not installed")
    path, why = no_triton.choose(1, 128, torch.float16)
    assert path is AttentionPath.SDPA and "not installed" in why


def test_decode_splits_fill_the_gpu_at_small_batch_and_stop_at_the_cache():
    few_heads = choose_decode_attention_config(12, 2048, sm_count=132)  # GLM-130B at TP=8, batch 1
    assert few_heads.num_splits == 16 and 12 * few_heads.num_splits >= 132  # 32 tiles, 2 per split at most
    many_heads = choose_decode_attention_config(8 * 96, 2048, sm_count=132)
    assert many_heads.num_splits == 1
    assert choose_decode_attention_config(1, 64, sm_count=132).num_splits == 1  # one tile: nothing to split
    assert choose_decode_attention_config(1, 1 << 20, sm_count=10_000).num_splits == MAX_ATTENTION_SPLITS
    hip = choose_decode_attention_config(12, 2048, platform="hip")
    assert hip.num_warps * 64 == few_heads.num_warps * 32  # same threads: wavefront 64 vs warp 32


@needs_triton
@pytest.mark.parametrize("sq", [1, 5])
def test_cuda_op_table_routes_calls_and_records_why(sq, kernel_device):
    ops = CudaOps(kernel_device, torch.float16)
    q, k, v = qkv(2, 2, 20, 16, torch.float16, sq=sq)
    blocked = generation_blocked(15, 20)[None, None, -sq:]
    on = [t.to(kernel_device) for t in (q, k, v, blocked)]
    if sq == 1:
        got = ops.attention(*on, 3.0).cpu()
        assert ops.attention_path["decode"].startswith("triton_decode")
        bound = max_nmse("attention:decode", torch.float16)
    else:
        got = ops.attention(*(t.float() for t in on[:3]), on[3], 3.0).cpu()  # SDPA on CPU has no fp16 mask kernel
        assert ops.attention_path["prefill"].startswith("sdpa")
        bound = max_nmse("attention:prefill", torch.float32)
    expected = reference_attention(q.double(), k.double(), v.double(), blocked, 3.0)
    assert nmse(got, expected) <= bound


def test_reference_policy_runs_the_portable_path():
    policy = AttentionPolicy(AttentionPath.REFERENCE, "no fused kernels", AttentionPath.REFERENCE, "no kernels")
    ops = CudaOps(torch.device("cpu"), torch.float32, policy)
    q, k, v = qkv(1, 2, 9, 8, torch.float32, sq=9)
    blocked = generation_blocked(4, 9)[None, None]
    torch.testing.assert_close(ops.attention(q, k, v, blocked, 2.0), reference_attention(q, k, v, blocked, 2.0))
    assert ops.attention_path["prefill"] == "reference: no fused kernels"


def test_cuda_op_table_refuses_a_dtype_it_cannot_compute():
    with pytest.raises(BackendError, match="fp16, bf16 or fp32"):
        CudaOps(torch.device("cpu"), torch.float64)


@needs_gpu
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_decode_kernel_on_the_gpu_at_glm130b_shapes(dtype):
    """Compiled kernel, real tiles and split choice: batch 2, 12 heads of 128 (TP=8), 2048 cached positions."""
    from glm_engine.kernels.triton.decode_attention import decode_attention

    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    q, k, v = (t.cuda() for t in qkv(2, 12, 2048, 128, dtype))
    blocked = random_blocked(2, 2048).cuda()
    props = torch.cuda.get_device_properties(0)
    platform = "hip" if torch.version.hip else "cuda"
    config = choose_decode_attention_config(24, 2048, sm_count=props.multi_processor_count, platform=platform)
    got = decode_attention(q, k, v, blocked, config)
    expected = reference_attention(q.cpu().double(), k.cpu().double(), v.cpu().double(), blocked.cpu(), 70.0)
    assert nmse(got.cpu(), expected) <= max_nmse("attention:decode", dtype)


@needs_gpu
def test_sdpa_prefill_on_the_gpu_matches_the_reference_in_fp16():
    q, k, v = (t.cuda() for t in qkv(2, 4, 300, 128, torch.float16, sq=300))
    blocked = generation_blocked(200, 300)[None, None].cuda()
    expected = reference_attention(q.cpu().double(), k.cpu().double(), v.cpu().double(), blocked.cpu(), 70.0)
    assert nmse(sdpa_attention(q, k, v, blocked).cpu(), expected) <= max_nmse("attention:prefill", torch.float16)


@needs_gpu
@pytest.mark.parametrize("s", [300, 320, 1088])  # 320 and 1088 are s % 128 == 64, where cuDNN's masked tiles fail
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_sdpa_runs_the_memory_efficient_kernel_it_names_on_the_gpu(s, dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    q, k, v = (t.cuda() for t in qkv(1, 4, s, 128, dtype, sq=s))
    blocked = generation_blocked(s - 64, s)[None, None].cuda()
    run = run_sdpa(q, k, v, blocked)
    assert run.path is AttentionPath.SDPA and run.detail == "memory-efficient kernel" and not run.fallback
    expected = reference_attention(q.cpu().double(), k.cpu().double(), v.cpu().double(), blocked.cpu(), 1.0)
    assert nmse(run.out.cpu(), expected) <= max_nmse("attention:prefill", dtype)


# --- which SDPA kernel runs, and what happens when none does (items the GPU would otherwise decide alone) ---------


class FakeSdpa:
    """Stands in, on meta tensors, for what ``run_sdpa`` asks of torch: the dispatcher's ``can_use_*_attention``
    answers (``takes``: kernel names that say yes), the ``sdpa_kernel`` context (recorded) and the SDPA call itself
    (zeros, or raises ``error``); ``reference_attention`` gives ones: the (CPU) output says which path ran."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, takes: set[str], error: Exception | None = None) -> None:
        self.allowed: list[list] = []
        self.error = error
        for name, attr in cuda_attention.FUSED_SDPA_CHECKS:
            answer = name in takes
            monkeypatch.setattr(torch.backends.cuda, attr, lambda params, debug=False, a=answer: a, raising=False)
        monkeypatch.setattr(cuda_attention, "sdpa_kernel", self.sdpa_kernel)
        monkeypatch.setattr(cuda_attention, "F", SimpleNamespace(scaled_dot_product_attention=self.sdpa))
        monkeypatch.setattr(cuda_attention, "reference_attention", lambda q, k, v, blocked, scale: torch.ones(q.shape))

    @contextmanager
    def sdpa_kernel(self, backends):
        self.allowed.append(list(backends))
        yield

    def sdpa(self, q, k, v, attn_mask=None, **kwargs):
        if self.error is not None:
            raise self.error
        return torch.zeros(q.shape)


def meta_qkv(dtype=torch.float16, sq=5):
    q, k, v = (torch.empty(1, 2, s, 64, dtype=dtype, device="meta") for s in (sq, 5, 5))
    return q, k, v, torch.zeros(1, 1, sq, 5, dtype=torch.bool, device="meta")


def test_the_cuda_policy_names_the_memory_efficient_kernel_and_cudnn_only_when_asked(monkeypatch):
    monkeypatch.delenv(ENV_CUDNN, raising=False)
    default = cuda_policy(True, "triton available")
    assert default.sdpa_kernels == (SDPBackend.EFFICIENT_ATTENTION,)
    assert (
        "memory-efficient kernel" in default.prefill_reason
        and f"cuDNN off unless {ENV_CUDNN}=1" in default.prefill_reason
    )
    monkeypatch.setenv(ENV_CUDNN, "1")
    opted = cuda_policy(True, "triton available")
    assert opted.sdpa_kernels == (SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION)
    assert "cuDNN opted in" in opted.prefill_reason
    assert cuda_policy(True, "", cudnn=False).sdpa_kernels == (SDPBackend.EFFICIENT_ATTENTION,)  # the caller decides
    assert SDPBackend.FLASH_ATTENTION not in opted.sdpa_kernels  # flash takes no mask: never offered a masked call


def test_sdpa_runs_exactly_the_allowed_kernel_the_dispatcher_accepts(monkeypatch):
    fake = FakeSdpa(monkeypatch, takes={"cuDNN", "memory-efficient", "flash"})
    run = run_sdpa(*meta_qkv()[:3], meta_qkv()[3])
    assert run.path is AttentionPath.SDPA and run.detail == "memory-efficient kernel"
    assert fake.allowed == [[SDPBackend.EFFICIENT_ATTENTION]]  # cuDNN said yes too, but was not asked for
    run = run_sdpa(*meta_qkv()[:3], meta_qkv()[3], kernels=sdpa_kernels(cudnn=True))
    assert run.detail == "cuDNN kernel" and fake.allowed[-1] == [SDPBackend.CUDNN_ATTENTION]


def test_no_allowed_kernel_falls_back_to_the_reference_and_says_so(monkeypatch):
    fake = FakeSdpa(monkeypatch, takes={"flash", "cuDNN"})  # neither is allowed by default
    q, k, v, blocked = meta_qkv()
    run = run_sdpa(q, k, v, blocked)
    assert run.path is AttentionPath.REFERENCE and "no allowed SDPA kernel (memory-efficient)" in run.detail
    assert fake.allowed == []  # SDPA was not tried: torch would have raised "No available kernel"
    assert torch.equal(run.out, torch.ones(q.shape))


def test_fp32_without_a_fused_kernel_runs_torchs_math_kernel_in_fp32_and_says_it_fell_back(monkeypatch):
    fake = FakeSdpa(monkeypatch, takes=set())
    run = run_sdpa(*meta_qkv(torch.float32)[:3], meta_qkv(torch.float32)[3])
    assert run.path is AttentionPath.SDPA and run.detail.startswith("math kernel")
    assert run.fallback.startswith("no allowed SDPA kernel") and fake.allowed == [[SDPBackend.MATH]]
    fake = FakeSdpa(monkeypatch, takes={"memory-efficient"})
    run = run_sdpa(*meta_qkv(torch.float32)[:3], meta_qkv(torch.float32)[3])
    assert run.detail == "memory-efficient kernel" and run.fallback == ""
    assert fake.allowed == [[SDPBackend.EFFICIENT_ATTENTION]]


def test_a_kernel_refusing_an_fp32_call_hands_it_to_the_math_kernel(monkeypatch):
    fake = FakeSdpa(monkeypatch, takes={"memory-efficient"})
    refusals = [RuntimeError("cutlassF: no kernel found to launch!")]

    def refuses_once(q, k, v, attn_mask=None, **kwargs):
        if refusals:
            raise refusals.pop()
        return torch.zeros(q.shape)

    monkeypatch.setattr(cuda_attention, "F", SimpleNamespace(scaled_dot_product_attention=refuses_once))
    run = run_sdpa(*meta_qkv(torch.float32)[:3], meta_qkv(torch.float32)[3])
    assert run.detail.startswith("math kernel") and "cutlassF: no kernel found to launch" in run.fallback
    assert fake.allowed == [[SDPBackend.EFFICIENT_ATTENTION], [SDPBackend.MATH]]


def test_only_torchs_no_kernel_error_falls_back_and_every_other_error_surfaces(monkeypatch):
    q, k, v, blocked = meta_qkv()
    FakeSdpa(monkeypatch, takes={"memory-efficient"}, error=RuntimeError("No available kernel. Aborting execution."))
    run = run_sdpa(q, k, v, blocked)
    assert run.path is AttentionPath.REFERENCE and "No available kernel" in run.fallback
    for error in (
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        torch.OutOfMemoryError("No available kernel memory"),  # out of memory never counts, whatever it says
        RuntimeError("cuDNN Frontend error: [cudnn_frontend] Error: No execution plans support the graph."),
        RuntimeError("CUDA error: an illegal memory access was encountered"),
    ):
        FakeSdpa(monkeypatch, takes={"memory-efficient"}, error=error)
        with pytest.raises(type(error), match=str(error)[:20]):
            run_sdpa(q, k, v, blocked)


def test_the_op_table_records_which_path_ran_and_keeps_every_fallback(monkeypatch):
    ops = CudaOps(torch.device("meta"), torch.float16, cuda_policy(True, "triton available"))
    q, k, v, blocked = meta_qkv()
    FakeSdpa(monkeypatch, takes={"memory-efficient"})
    ops.attention(q, k, v, blocked, 1.0)
    assert (
        ops.attention_path["prefill"].startswith("sdpa: torch SDPA")
        and "ran the memory-efficient kernel" in (ops.attention_path["prefill"])
    )
    assert ops.attention_fallbacks == {}
    FakeSdpa(monkeypatch, takes=set())
    ops.attention(q, k, v, blocked, 1.0)
    assert ops.attention_path["prefill"].startswith(
        "reference: fallback from sdpa's fused kernels to the reference path: no allowed SDPA kernel"
    )
    assert ops.attention_fallbacks["prefill"].startswith("sdpa fell back to the reference path")
    FakeSdpa(monkeypatch, takes={"memory-efficient"})
    ops.attention(q, k, v, blocked, 1.0)  # a later call that runs SDPA again does not erase the fallback
    assert ops.attention_path["prefill"].startswith("sdpa") and "prefill" in ops.attention_fallbacks
