"""The Ascend backend's own logic without an NPU: SoC classification, kernel choice per SoC and dtype, the arguments
handed to torch_npu (layouts, mask convention, KV cache read in place), rotary, device reporting, HCCL.

Calls go to ``TorchNpuDouble`` (tests/npu_double.py), which implements the documented semantics of the torch_npu
functions we call: results matching the reference here show our calling code is right *if* the kernels compute what
their pages say. That is not device conformance; the tests at the end run the real kernels and skip without an NPU.
"""

from __future__ import annotations

import pytest
import torch
from bounds import max_nmse, nmse
from npu_double import GIB, TorchNpuDouble

from glm_engine.backends.ascend import AscendBackend
from glm_engine.backends.ascend.attention import AttentionKernel, choose_kernel, kv_in_place
from glm_engine.backends.ascend.ops import AscendOps
from glm_engine.backends.ascend.soc import SocFamily, classify_soc
from glm_engine.backends.registry import get_backend, op_table_for
from glm_engine.cli.backends import describe_backend
from glm_engine.model.kv_cache import KVCache
from glm_engine.ops.interface import Op
from glm_engine.ops.torch_ops import DequantizingLinear, TorchOps, reference_attention
from glm_engine.quant.weight import QuantizedWeight

A2, A3, INFERENCE = SocFamily.ATLAS_A2, SocFamily.ATLAS_A3, SocFamily.ATLAS_INFERENCE
# Outputs are held to the conformance suite's bounds against the float64 reference (tests/bounds.py).
DOUBLES = {A2: ("Ascend910B2", 221), A3: ("Ascend910_9391", 250), INFERENCE: ("Ascend310P3", 202)}


def double_for(family: SocFamily, **kwargs) -> TorchNpuDouble:
    name, code = DOUBLES[family]
    return TorchNpuDouble(device_name=name, soc_code=code, **kwargs)


def glm_blocked(batch: int, sq: int, sk: int, context: int, pads: list[int]) -> torch.Tensor:
    """GLM's prefix-bidirectional mask for queries at positions ``sk - sq ..``: left padding blocked, the context
    ``[pad, context)`` visible to every query, later keys causal. True = may not attend."""
    rows = torch.arange(sk - sq, sk).view(sq, 1)
    cols = torch.arange(sk).view(1, sk)
    causal_or_context = (cols <= rows) | (cols < context)
    blocked = torch.stack([~causal_or_context | (cols < pad) for pad in pads]).unsqueeze(1)
    return blocked  # [b, 1, sq, sk]


def qkv(batch: int, heads: int, sq: int, sk: int, d: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, sq, d, generator=g).to(dtype)
    k = torch.randn(batch, heads, sk, d, generator=g).to(dtype)
    v = torch.randn(batch, heads, sk, d, generator=g).to(dtype)
    return q, k, v


@pytest.mark.parametrize(
    ("name", "code", "family"),
    [
        ("Ascend910B1", None, A2),
        ("Ascend910B2", None, A2),
        ("Ascend910B2C", None, A2),
        ("Ascend910B3", None, A2),
        ("Ascend910B4-1", None, A2),
        ("Ascend910_9391", None, A3),
        ("Ascend910_9362", None, A3),
        ("Ascend310P3", None, INFERENCE),
        ("Ascend310P1", None, INFERENCE),
        ("Ascend910B", None, SocFamily.ATLAS_TRAINING),  # the bare name is the first-generation 910, not A2
        ("Ascend910ProB", None, SocFamily.ATLAS_TRAINING),
        ("Ascend950PR", None, SocFamily.UNKNOWN),
        ("some future name", 223, A2),  # the SoC code decides when the name is not recognised
        ("some future name", 253, A3),
        ("some future name", 999, SocFamily.UNKNOWN),
    ],
)
def test_soc_family_is_read_from_the_device_name_then_the_soc_code(name, code, family):
    assert classify_soc(name, code) is family


@pytest.mark.parametrize(
    ("family", "decode", "kernel"),
    [
        (A2, False, AttentionKernel.FUSION),
        (A2, True, AttentionKernel.INCRE),
        (A3, False, AttentionKernel.FUSED_INFER),
        (A3, True, AttentionKernel.FUSED_INFER),
        (INFERENCE, False, AttentionKernel.PROMPT),
        (INFERENCE, True, AttentionKernel.INCRE),
    ],
)
def test_each_soc_gets_the_kernel_documented_for_it(family, decode, kernel):
    assert choose_kernel(double_for(family), family, torch.float16, decode) == (kernel, "")


def test_kernel_choice_falls_back_with_the_reason():
    npu = double_for(A2)
    kernel, why = choose_kernel(npu, A2, torch.float32, decode=False)
    assert kernel is None and "fp16/bf16" in why and "portable fp32" in why
    kernel, why = choose_kernel(npu, INFERENCE, torch.bfloat16, decode=True)
    assert kernel is None and "Atlas A2/A3 only" in why
    kernel, why = choose_kernel(npu, SocFamily.ATLAS_TRAINING, torch.float16, decode=False)
    assert kernel is None and "documents no fused prefill" in why
    older = double_for(A2, omit=("npu_fusion_attention",))
    assert choose_kernel(older, A2, torch.float16, decode=False) == (AttentionKernel.PROMPT, "")
    none = double_for(INFERENCE, omit=("npu_incre_flash_attention",))
    kernel, why = choose_kernel(none, INFERENCE, torch.float16, decode=True)
    assert kernel is None and "npu_incre_flash_attention" in why


@pytest.mark.parametrize(
    ("family", "dtype"),
    [(A2, torch.float16), (A2, torch.bfloat16), (A3, torch.float16), (A3, torch.bfloat16), (INFERENCE, torch.float16)],
)
def test_prefill_with_the_prefix_bidirectional_mask_matches_the_reference(family, dtype):
    npu = double_for(family)
    ops = AscendOps(torch.device("cpu"), dtype, npu=npu, family=family)
    q, k, v = qkv(2, 4, 12, 12, 64, dtype)
    blocked = glm_blocked(2, 12, 12, context=7, pads=[0, 3])
    got = ops.attention(q, k, v, blocked, layer_scale=5.0)
    expected = reference_attention(q.double(), k.double(), v.double(), blocked, 5.0)
    assert got.dtype == dtype and got.shape == q.shape
    assert nmse(got, expected) <= max_nmse("attention:prefill", dtype)
    kernel, _ = choose_kernel(npu, family, dtype, decode=False)
    assert ops.paths["attention-prefill"] == kernel.value
    name, args = npu.calls[-1]
    assert name == kernel.value
    assert args["atten_mask"].dtype == torch.bool and torch.equal(args["atten_mask"], blocked)  # 1 = not computed
    assert args["scale"] == pytest.approx(64**-0.5)


def test_a_dropped_mask_would_be_caught():
    """The comparison above can fail: without the mask the same inputs give a clearly different result."""
    q, k, v = qkv(2, 4, 12, 12, 64, torch.float16)
    blocked = glm_blocked(2, 12, 12, context=7, pads=[0, 3])
    unmasked = reference_attention(q.double(), k.double(), v.double(), torch.zeros_like(blocked), 1.0)
    assert nmse(unmasked, reference_attention(q.double(), k.double(), v.double(), blocked, 1.0)) > 1e-2


@pytest.mark.parametrize("family", [A2, A3, INFERENCE])
def test_decode_reads_the_kv_cache_in_place_and_matches_the_reference(family):
    npu = double_for(family)
    ops = AscendOps(torch.device("cpu"), torch.float16, npu=npu, family=family)
    cache = KVCache(1, 2, 4, 32, 64, torch.float16, "cpu")
    _, k0, v0 = qkv(2, 4, 9, 9, 64, torch.float16, seed=1)
    cache.update(0, k0, v0)
    cache.advance(9)
    q, k1, v1 = qkv(2, 4, 1, 1, 64, torch.float16, seed=2)
    k, v = cache.update(0, k1, v1)
    assert not k.is_contiguous()  # a view of the first 10 of 32 rows
    blocked = glm_blocked(2, 1, 10, context=6, pads=[0, 2])
    got = ops.attention(q, k, v, blocked, layer_scale=3.0)
    expected = reference_attention(q.double(), k.double(), v.double(), blocked, 3.0)
    assert nmse(got, expected) <= max_nmse("attention:decode", torch.float16)
    name, args = npu.calls[-1]
    assert name == ops.paths["attention-decode"]
    assert args["key"].data_ptr() == cache.storage[0, 0].data_ptr() and args["key"].shape[2] == 32  # no copy
    assert args["lengths"] == [10, 10]
    assert args["atten_mask"].shape == (2, 1, 1, 32) and bool(args["atten_mask"][..., 10:].all())


@pytest.mark.parametrize("family", [A2, A3])
def test_each_step_builds_one_kernel_mask_for_every_layer_without_padding_a_bool_tensor(family, monkeypatch):
    """Every layer of a step gets the same mask object (counted in the double's calls); a new step builds one new
    mask; the mask is widened to the cache buffer by fill and copy, never by a bool pad."""

    def no_pad(*args, **kwargs):
        raise AssertionError("the decode mask is widened without F.pad (a bool constant_pad_nd)")

    monkeypatch.setattr(torch.nn.functional, "pad", no_pad)
    npu = double_for(family)
    ops = AscendOps(torch.device("cpu"), torch.float16, npu=npu, family=family)
    layers = 3
    cache = KVCache(layers, 2, 4, 32, 64, torch.float16, "cpu")
    q, k0, v0 = qkv(2, 4, 9, 9, 64, torch.float16, seed=1)
    prefill_blocked = glm_blocked(2, 9, 9, context=6, pads=[0, 2])
    for layer in range(layers):
        ops.attention(q, *cache.update(layer, k0, v0), prefill_blocked, layer_scale=layer + 1.0)
    cache.advance(9)
    steps = []
    for step in range(2):
        q, k1, v1 = qkv(2, 4, 1, 1, 64, torch.float16, seed=2 + step)
        blocked = glm_blocked(2, 1, 10 + step, context=6, pads=[0, 2])  # a new tensor per step, as decode slices it
        steps.append(blocked)
        for layer in range(layers):
            ops.attention(q, *cache.update(layer, k1, v1), blocked, layer_scale=layer + 1.0)
        cache.advance(1)
    masks = [args["atten_mask"] for _, args in npu.calls]
    assert len(masks) == 3 * layers
    per_call = [masks[i * layers : (i + 1) * layers] for i in range(3)]
    assert all(m is group[0] for group in per_call for m in group)  # one mask object per call, shared by the layers
    assert len({id(group[0]) for group in per_call}) == 3 and ops.masks.builds == 3
    last = per_call[2][0]
    assert last.shape == (2, 1, 1, 32) and last.dtype == torch.bool and last.is_contiguous()
    assert torch.equal(last[..., :11], steps[1].expand(2, 1, 1, 11)) and bool(last[..., 11:].all())


def test_kv_views_that_are_not_a_buffer_prefix_are_copied():
    k = torch.randn(2, 4, 8, 16).transpose(1, 2)  # [2, 8, 4, 16] with heads innermost: not a prefix of any buffer
    kk, _, length = kv_in_place(k, k)
    assert length is None and kk.is_contiguous() and torch.equal(kk, k)


def test_fp32_and_oversized_shapes_run_the_portable_attention_with_the_reason():
    npu = double_for(A2)
    fp32 = AscendOps(torch.device("cpu"), torch.float32, npu=npu, family=A2)
    q, k, v = qkv(1, 2, 4, 4, 16, torch.float32)
    blocked = glm_blocked(1, 4, 4, context=2, pads=[0])
    assert torch.equal(fp32.attention(q, k, v, blocked, 2.0), reference_attention(q, k, v, blocked, 2.0))
    assert fp32.paths["attention-prefill"].startswith("portable: ") and not npu.calls
    ops = AscendOps(torch.device("cpu"), torch.float16, npu=npu, family=INFERENCE)
    q, k, v = qkv(1, 2, 1, 4, 40, torch.float16)  # head dim 40 is not 16-aligned
    ops.attention(q, k, v, glm_blocked(1, 1, 4, context=2, pads=[0]), 1.0)
    assert "multiple of 16" in ops.paths["attention-decode"] and not npu.calls


@pytest.mark.parametrize(("family", "dtype"), [(A2, torch.float16), (A2, torch.bfloat16), (A3, torch.float16)])
def test_rotary_runs_npu_rotary_mul_with_per_row_positions_on_a2_a3(family, dtype):
    npu = double_for(family)
    ops = AscendOps(torch.device("cpu"), dtype, npu=npu, family=family)
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(2, 5, 4, 64, generator=g).to(dtype) for _ in range(2))
    angles = torch.randn(2, 5, 1, 64, generator=g)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    got_q, got_k = ops.rotary(q, k, cos, sin)
    want_q, want_k = TorchOps(torch.device("cpu"), torch.float64).rotary(
        q.double(), k.double(), cos.double(), sin.double()
    )
    assert ops.paths["rotary"] == "npu_rotary_mul" and [c[0] for c in npu.calls] == ["npu_rotary_mul"] * 2
    assert nmse(got_q, want_q) <= max_nmse("rotary", dtype) and nmse(got_k, want_k) <= max_nmse("rotary", dtype)


def test_rotary_on_310p_needs_head_dim_128_and_batch_shared_positions():
    npu = double_for(INFERENCE)
    ops = AscendOps(torch.device("cpu"), torch.float16, npu=npu, family=INFERENCE)
    q = torch.randn(2, 3, 2, 64).half()
    cos = torch.ones(2, 3, 1, 64).half()
    ops.rotary(q, q, cos, cos * 0)
    assert "head dim 128" in ops.paths["rotary"] and not npu.calls
    q = torch.randn(2, 3, 2, 128).half()
    ops.rotary(q, q, torch.ones(1, 3, 1, 128).half(), torch.zeros(1, 3, 1, 128).half())
    assert ops.paths["rotary"] == "npu_rotary_mul"


def test_per_row_rotary_positions_run_fused_only_while_jit_compile_is_false():
    """BS1D (each row at its own positions) is documented for jit_compile=False; with jit_compile=True the page lists
    1S1D only, so per-row positions go portable while batch-shared ones (head dim 128) stay fused."""
    npu = double_for(A2)  # jit_compile=False: the documented default on Atlas A2
    ops = AscendOps(torch.device("cpu"), torch.float16, npu=npu, family=A2)
    q = torch.randn(2, 5, 4, 128).half()
    per_row, shared = torch.ones(2, 5, 1, 128).half(), torch.ones(1, 5, 1, 128).half()
    ops.rotary(q, q, per_row, per_row * 0)
    assert ops.paths["rotary"] == "npu_rotary_mul"
    npu.npu.set_compile_mode(jit_compile=True)
    with pytest.raises(AssertionError, match="1S1D"):  # the double enforces the jit_compile=True layouts
        npu.npu_rotary_mul(q, per_row, per_row * 0)
    npu.calls.clear()
    ops.rotary(q, q, per_row, per_row * 0)
    assert "jit_compile=False only" in ops.paths["rotary"] and not npu.calls
    ops.rotary(q, q, shared, shared * 0)
    assert ops.paths["rotary"] == "npu_rotary_mul" and len(npu.calls) == 2


@pytest.mark.parametrize(
    ("family", "kwargs", "reason"),
    [
        (A3, {"jit_compile": True}, "no limits for jit_compile=True on Atlas A3"),
        (INFERENCE, {"jit_compile": False}, "jit_compile=False for Atlas A2/A3 only"),
        (A2, {"omit": ("is_jit_compile_false",)}, "cannot say which is set"),
    ],
)
def test_rotary_in_a_compile_mode_its_page_lists_no_limits_for_is_portable(family, kwargs, reason):
    npu = double_for(family, **kwargs)
    ops = AscendOps(torch.device("cpu"), torch.float16, npu=npu, family=family)
    q = torch.randn(1, 5, 4, 128).half()
    cos = torch.ones(1, 5, 1, 128).half()
    ops.rotary(q, q, cos, cos * 0)
    assert ops.paths["rotary"].startswith("portable: ") and reason in ops.paths["rotary"] and not npu.calls


def test_310p_serves_only_fp16_per_channel_int8_weights_in_the_npu_matmul():
    ops = AscendOps(torch.device("cpu"), torch.float16, npu=double_for(INFERENCE), family=INFERENCE)
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(4)) * 0.05
    assert not isinstance(ops.prepare_quantized(QuantizedWeight.quantize(weight, 8, None)), DequantizingLinear)
    assert isinstance(ops.prepare_quantized(QuantizedWeight.quantize(weight, 4, None)), DequantizingLinear)
    assert "per-channel INT8 only" in ops.quant_path["int4-rowwise"]


def test_devices_report_the_npu_model_soc_memory_and_cann_version(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    backend = AscendBackend(npu=double_for(A2, count=2, cann="8.0.RC3"))
    assert backend.availability().ok and "CANN 8.0.RC3" in backend.availability().reason
    devices = backend.devices()
    assert [d.name for d in devices] == ["Ascend910B2", "Ascend NPU (not queried)"]
    assert devices[0].total_memory_bytes == 64 * GIB and devices[0].free_memory_bytes == 32 * GIB
    assert "Atlas A2" in devices[0].detail and "CANN 8.0.RC3" in devices[0].detail
    assert devices[0].capability == "Ascend910B2" and "npu:0" in devices[1].detail
    row = describe_backend(backend)
    assert row["available"] and row["dtypes"] == ["fp16", "bf16", "fp32"] and row["distributed_backend"] == "hccl"
    assert backend.family(0) is A2 and backend.family(5) is SocFamily.UNKNOWN  # op_table hands the family to AscendOps


@pytest.mark.parametrize(("local_rank", "own"), [(None, 0), ("2", 2)])
def test_each_process_queries_only_its_own_npu(monkeypatch, local_rank, own):
    """Counting the NPUs touches none; names and memory are asked of the process's own device only, so the launcher
    and every rank do not each open a context on every NPU (what ``devices()``, the TP device check and
    ``supported_dtypes`` call)."""
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    npu = double_for(A2, count=4)
    backend = AscendBackend(npu=npu)
    devices = backend.devices()
    assert len(devices) == 4 and [d.index for d in devices if d.total_memory_bytes] == [own]
    backend.supported_dtypes()
    backend.supports(Op.ATTENTION, torch.bfloat16)
    assert set(npu.npu.touched) == {own}
    assert backend.family(own) is A2  # what op_table(dtype, own) hands its AscendOps
    assert set(npu.npu.touched) == {own}


def test_supports_names_the_soc_restrictions():
    a2 = AscendBackend(npu=double_for(A2))
    assert (
        "prefill: npu_fusion_attention, decode: npu_incre_flash_attention"
        in a2.supports(Op.ATTENTION, torch.bfloat16).reason
    )
    assert "portable" in a2.supports(Op.ATTENTION, torch.float32).reason
    p310 = AscendBackend(npu=double_for(INFERENCE))
    verdict = p310.supports(Op.ATTENTION, torch.bfloat16)
    assert not verdict.ok and "Atlas A2/A3 only" in verdict.reason and "310P" in verdict.reason
    assert p310.supported_dtypes() == (torch.float16, torch.float32)
    int4 = p310.supports(Op.LINEAR, torch.float16, "int4-groupwise")
    assert int4.ok and "dequantized" in int4.reason and "per-channel INT8" in int4.reason
    assert p310.supports(Op.LINEAR, torch.float16, "int8-rowwise").reason == "torch_npu.npu_weight_quant_batchmatmul"
    first_gen = AscendBackend(npu=TorchNpuDouble(device_name="Ascend910ProB", soc_code=103))
    assert "portable" in first_gen.supports(Op.ATTENTION, torch.float16).reason


def test_without_torch_npu_supports_lists_the_documented_paths_per_soc():
    backend = get_backend("ascend")
    if backend.availability().ok:
        pytest.skip("torch_npu is installed here")
    reason = backend.supports(Op.ATTENTION, torch.float16).reason
    assert "no NPU here" in reason and "Atlas inference series (Ascend 310P): prefill: npu_prompt_flash" in reason


def test_tensor_parallel_joins_an_hccl_group_on_the_local_npu(monkeypatch):
    from glm_engine.parallel import communicator

    npu = double_for(A2, count=2)
    seen = {}

    def init_process_group(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here: the group itself needs NPUs")

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setattr(communicator.torch, "get_device_module", lambda device_type: npu.npu)
    monkeypatch.setattr(communicator.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(communicator.dist, "init_process_group", init_process_group)
    with pytest.raises(RuntimeError, match="stop here"):
        communicator.init_from_environment(AscendBackend(npu=npu))
    assert seen["backend"] == "hccl" and seen["rank"] == 1 and npu.npu.current == 1


# --- on a real NPU (these are the only tests here that say anything about the device) -------------------------

NEEDS_NPU = pytest.mark.skipif(
    not get_backend("ascend").availability().ok,
    reason=f"needs an Ascend NPU: {get_backend('ascend').availability().reason}",
)


@NEEDS_NPU
@pytest.mark.parametrize("sq", [12, 1], ids=["prefill", "decode"])
def test_npu_attention_matches_the_reference(sq):
    backend = get_backend("ascend")
    ops = op_table_for(backend, torch.float16)
    q, k, v = qkv(2, 4, sq, 12, 128, torch.float16)
    blocked = glm_blocked(2, sq, 12, context=7, pads=[0, 3])
    dev = backend.device()
    got = ops.attention(q.to(dev), k.to(dev), v.to(dev), blocked.to(dev), 4.0).cpu()
    expected = reference_attention(q.double(), k.double(), v.double(), blocked, 4.0)
    check = "attention:decode" if sq == 1 else "attention:prefill"
    assert nmse(got, expected) <= max_nmse(check, torch.float16), ops.paths


@NEEDS_NPU
def test_npu_rotary_matches_the_reference():
    backend = get_backend("ascend")
    ops = op_table_for(backend, torch.float16)
    q = torch.randn(2, 5, 4, 128).half()
    angles = torch.randn(1, 5, 1, 128)
    cos, sin = angles.cos().half(), angles.sin().half()
    dev = backend.device()
    got, _ = ops.rotary(q.to(dev), q.to(dev), cos.to(dev), sin.to(dev))
    want, _ = TorchOps(torch.device("cpu"), torch.float64).rotary(q.double(), q.double(), cos.double(), sin.double())
    assert nmse(got.cpu(), want) <= max_nmse("rotary", torch.float16), ops.paths
