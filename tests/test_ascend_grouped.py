"""The Ascend table's calls for the ops ChatGLM2 and later need, without an NPU: grouped key/value heads handed to the
fused attention kernels (``num_key_value_heads``, or key/value's N axis for ``npu_fusion_attention``), repeated only
where a page rules the grouped call out; RMSNorm and SwiGLU on ``npu_rms_norm`` / ``npu_swiglu`` only where their
rounding is the contract's (fp32), the portable ops with the reason elsewhere.

As in tests/test_ascend_backend.py the calls go to ``TorchNpuDouble`` (tests/npu_double.py), which implements and
checks what the torch_npu pages document. Agreement here shows the arguments are shaped as documented; it says
nothing about what an NPU computes (``glm-engine conformance --backend ascend`` on a device does).
"""

from __future__ import annotations

import pytest
import torch
from bounds import max_nmse, nmse
from npu_double import TorchNpuDouble

from glm_engine.backends.ascend import AscendBackend
from glm_engine.backends.ascend.attention import MAX_GROUP_RATIO, AttentionKernel
from glm_engine.backends.ascend.ops import AscendOps
from glm_engine.backends.ascend.soc import SocFamily
from glm_engine.model.kv_cache import KVCache
from glm_engine.ops.interface import Op
from glm_engine.ops.torch_ops import TorchOps, reference_attention

A2, A3, INFERENCE = SocFamily.ATLAS_A2, SocFamily.ATLAS_A3, SocFamily.ATLAS_INFERENCE
DOUBLES = {A2: ("Ascend910B2", 221), A3: ("Ascend910_9391", 250), INFERENCE: ("Ascend310P3", 202)}
HEADS, GROUPS, D = 8, 2, 64
PREFILL_KERNEL = {A2: AttentionKernel.FUSION, A3: AttentionKernel.FUSED_INFER, INFERENCE: AttentionKernel.PROMPT}
DECODE_KERNEL = {A2: AttentionKernel.INCRE, A3: AttentionKernel.FUSED_INFER, INFERENCE: AttentionKernel.INCRE}


def double_for(family: SocFamily, **kwargs) -> TorchNpuDouble:
    name, code = DOUBLES[family]
    return TorchNpuDouble(device_name=name, soc_code=code, **kwargs)


def grouped_qkv(b: int, h: int, g: int, sq: int, sk: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, sq, D, generator=gen).to(dtype)
    k, v = (torch.randn(b, g, sk, D, generator=gen).to(dtype) for _ in range(2))
    return q, k, v


def causal_blocked(b: int, sq: int, sk: int, context: int) -> torch.Tensor:
    rows = torch.arange(sk - sq, sk).view(sq, 1)
    cols = torch.arange(sk).view(1, sk)
    return (~((cols <= rows) | (cols < context))).expand(b, 1, sq, sk).clone()


def reference(q, k, v, blocked, layer_scale=1.0):
    return reference_attention(q.double(), k.double(), v.double(), blocked, layer_scale)


@pytest.mark.parametrize("family", [A2, A3])
def test_grouped_prefill_hands_the_grouped_heads_to_the_kernel(family):
    npu = double_for(family)
    ops = AscendOps(torch.device("cpu"), torch.float16, npu=npu, family=family)
    q, k, v = grouped_qkv(2, HEADS, GROUPS, 12, 12, torch.float16)
    blocked = causal_blocked(2, 12, 12, context=5)
    got = ops.attention(q, k, v, blocked, 1.0)
    assert nmse(got, reference(q, k, v, blocked)) <= max_nmse("grouped_attention:prefill", torch.float16)
    name, args = npu.calls[-1]
    assert name == PREFILL_KERNEL[family].value
    assert args["key"].shape[1] == GROUPS  # no repeated copy
    assert ops.paths["attention-prefill"] == f"{name}, {GROUPS} key/value heads read in place"
    if family is A3:  # npu_fusion_attention (A2) reads the count from key/value's N axis; the others take it
        assert args["num_key_value_heads"] == GROUPS


@pytest.mark.parametrize("family", [A2, A3, INFERENCE])
def test_grouped_decode_reads_the_grouped_cache_in_place(family):
    npu = double_for(family)
    ops = AscendOps(torch.device("cpu"), torch.float16, npu=npu, family=family)
    cache = KVCache(1, 2, GROUPS, 32, D, torch.float16, "cpu")
    _, k0, v0 = grouped_qkv(2, HEADS, GROUPS, 9, 9, torch.float16, seed=1)
    cache.update(0, k0, v0)
    cache.advance(9)
    q, k1, v1 = grouped_qkv(2, HEADS, GROUPS, 1, 1, torch.float16, seed=2)
    k, v = cache.update(0, k1, v1)
    blocked = causal_blocked(2, 1, 10, context=6)
    got = ops.attention(q, k, v, blocked, 1.0)
    assert nmse(got, reference(q, k, v, blocked)) <= max_nmse("grouped_attention:decode", torch.float16)
    name, args = npu.calls[-1]
    assert name == DECODE_KERNEL[family].value and args["num_key_value_heads"] == GROUPS
    assert args["key"].data_ptr() == cache.storage[0, 0].data_ptr() and args["key"].shape[1:3] == (GROUPS, 32)
    assert args["lengths"] == [10, 10]


def test_310p_prompt_kernel_gets_repeated_heads_with_the_reason():
    """Its page: the Atlas inference series takes num_key_value_heads 0 only; the double refuses anything else."""
    npu = double_for(INFERENCE)
    ops = AscendOps(torch.device("cpu"), torch.float16, npu=npu, family=INFERENCE)
    q, k, v = grouped_qkv(1, HEADS, GROUPS, 6, 6, torch.float16)
    blocked = causal_blocked(1, 6, 6, context=2)
    got = ops.attention(q, k, v, blocked, 1.0)
    assert nmse(got, reference(q, k, v, blocked)) <= max_nmse("grouped_attention:prefill", torch.float16)
    name, args = npu.calls[-1]
    assert name == "npu_prompt_flash_attention" and args["num_key_value_heads"] == 0
    assert (
        "repeated" in ops.paths["attention-prefill"] and "num_key_value_heads 0 only" in ops.paths["attention-prefill"]
    )
    with pytest.raises(AssertionError, match="0 only"):  # what passing the groups would have met
        npu.npu_prompt_flash_attention(q, k, v, num_heads=HEADS, input_layout="BNSD", num_key_value_heads=GROUPS)


def test_more_than_64_query_heads_per_key_value_head_are_repeated_for_the_inference_kernels():
    heads = 2 * MAX_GROUP_RATIO
    q, k, v = grouped_qkv(1, heads, 1, 1, 5, torch.float16)
    blocked = torch.zeros(1, 1, 1, 5, dtype=torch.bool)
    npu = double_for(A3)
    ops = AscendOps(torch.device("cpu"), torch.float16, npu=npu, family=A3)
    got = ops.attention(q, k, v, blocked, 1.0)
    assert nmse(got, reference(q, k, v, blocked)) <= max_nmse("grouped_attention:decode", torch.float16)
    assert "at most 64 query heads" in ops.paths["attention-decode"]
    assert npu.calls[-1][1]["num_key_value_heads"] == 0 and npu.calls[-1][1]["key"].shape[1] == heads
    with pytest.raises(AssertionError, match="exceed 64"):  # the double holds the page's limit
        npu.npu_incre_flash_attention(q, k, v, num_heads=heads, input_layout="BNSD", num_key_value_heads=1)


def test_the_double_refuses_a_head_count_that_is_not_the_key_value_heads():
    """The argument checks above can fail: grouped keys with num_key_value_heads left at 0 are refused."""
    q, k, v = grouped_qkv(1, HEADS, GROUPS, 1, 4, torch.float16)
    with pytest.raises(AssertionError, match="num_key_value_heads must equal"):
        double_for(A2).npu_incre_flash_attention(q, k, v, num_heads=HEADS, input_layout="BNSD")


@pytest.mark.parametrize("family", [A2, A3, INFERENCE])
@pytest.mark.parametrize("weight_in_fp32", [False, True])
def test_rmsnorm_runs_npu_rms_norm_in_fp32(family, weight_in_fp32):
    npu = double_for(family)
    ops = AscendOps(torch.device("cpu"), torch.float32, npu=npu, family=family)
    gen = torch.Generator().manual_seed(5)
    x, weight = torch.randn(3, 7, 96, generator=gen) + 0.5, 1 + torch.randn(96, generator=gen) * 0.2
    got = ops.rmsnorm(x, weight, 1e-5, weight_in_fp32)
    want = TorchOps(torch.device("cpu"), torch.float64).rmsnorm(x.double(), weight.double(), 1e-5, weight_in_fp32)
    assert ops.paths["rmsnorm"] == "npu_rms_norm" and npu.calls[-1][0] == "npu_rms_norm"
    assert npu.calls[-1][1]["epsilon"] == 1e-5
    variant = "weight-in-fp32" if weight_in_fp32 else "weight-in-dtype"
    assert nmse(got, want) <= max_nmse(f"rmsnorm:{variant}", torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rmsnorm_in_fp16_bf16_stays_portable_because_the_kernels_rounding_is_undocumented(dtype):
    npu = double_for(A2)
    ops = AscendOps(torch.device("cpu"), dtype, npu=npu, family=A2)
    x, weight = torch.randn(2, 64).to(dtype), torch.ones(64).to(dtype)
    for weight_in_fp32 in (False, True):
        portable = TorchOps(torch.device("cpu"), dtype).rmsnorm(x, weight, 1e-5, weight_in_fp32)
        assert torch.equal(ops.rmsnorm(x, weight, 1e-5, weight_in_fp32), portable)
    assert not npu.calls and "where it rounds" in ops.paths["rmsnorm"]


def test_rmsnorm_on_a_torch_npu_without_the_kernel_or_an_unknown_soc_is_portable():
    older = AscendOps(torch.device("cpu"), torch.float32, npu=double_for(A2, omit=("npu_rms_norm",)), family=A2)
    older.rmsnorm(torch.randn(2, 8), torch.ones(8), 1e-5)
    assert "has no npu_rms_norm" in older.paths["rmsnorm"]
    unknown = AscendOps(torch.device("cpu"), torch.float32, npu=double_for(A2), family=SocFamily.UNKNOWN)
    unknown.rmsnorm(torch.randn(2, 8), torch.ones(8), 1e-5)
    assert "not documented" in unknown.paths["rmsnorm"]


def test_swiglu_runs_npu_swiglu_on_atlas_a2_in_fp32_with_gate_first():
    npu = double_for(A2)
    ops = AscendOps(torch.device("cpu"), torch.float32, npu=npu, family=A2)
    x = torch.randn(3, 5, 2 * 48, generator=torch.Generator().manual_seed(6))
    got = ops.swiglu(x)
    want = TorchOps(torch.device("cpu"), torch.float64).swiglu(x.double())
    assert ops.paths["swiglu"] == "npu_swiglu" and npu.calls[-1] == ("npu_swiglu", {"dim": -1})
    assert nmse(got, want) <= max_nmse("swiglu", torch.float32)
    gate, up = x.double().chunk(2, -1)
    assert nmse(got, torch.nn.functional.silu(up) * gate) > 1e-2  # the halves' order matters: this could fail


@pytest.mark.parametrize(
    ("family", "dtype", "why"),
    [(A3, torch.float32, "not documented for Atlas A3"), (A2, torch.bfloat16, "where it rounds")],
)
def test_swiglu_elsewhere_is_portable_with_the_reason(family, dtype, why):
    npu = double_for(family)
    ops = AscendOps(torch.device("cpu"), dtype, npu=npu, family=family)
    x = torch.randn(2, 32).to(dtype)
    assert torch.equal(ops.swiglu(x), TorchOps(torch.device("cpu"), dtype).swiglu(x))
    assert not npu.calls and why in ops.paths["swiglu"]


def test_supports_says_how_each_soc_runs_the_new_ops():
    a2 = AscendBackend(npu=double_for(A2))
    grouped = a2.supports(Op.GROUPED_ATTENTION, torch.float16).reason
    assert grouped == (
        "prefill: npu_fusion_attention, grouped heads read in place, "
        "decode: npu_incre_flash_attention, grouped heads read in place"
    )
    assert a2.supports(Op.RMSNORM, torch.float32).reason == "npu_rms_norm"
    assert "portable" in a2.supports(Op.RMSNORM, torch.float16).reason
    assert a2.supports(Op.SWIGLU, torch.float32).reason == "npu_swiglu"
    p310 = AscendBackend(npu=double_for(INFERENCE))
    note = p310.supports(Op.GROUPED_ATTENTION, torch.float16).reason
    assert "prefill: npu_prompt_flash_attention, key/value heads repeated" in note
    assert "decode: npu_incre_flash_attention, grouped heads read in place" in note


# --- on a real NPU (the only tests here that say anything about the device) ------------------------------------

NEEDS_NPU = pytest.mark.skipif(
    not AscendBackend().availability().ok, reason=f"needs an Ascend NPU: {AscendBackend().availability().reason}"
)


@NEEDS_NPU
@pytest.mark.parametrize("sq", [12, 1], ids=["prefill", "decode"])
def test_npu_grouped_attention_matches_the_reference_and_confirms_the_grouping(sq):
    """The grouping (query head i reads key/value head i // (heads / groups)) is an assumption about the kernels;
    this is where it is checked, next to the round-robin grouping it must not match."""
    backend = AscendBackend()
    ops = backend.op_table(torch.float16)
    q, k, v = grouped_qkv(2, 32, GROUPS, sq, 12, torch.float16)
    blocked = causal_blocked(2, sq, 12, context=7)
    dev = backend.device()
    got = ops.attention(q.to(dev), k.to(dev), v.to(dev), blocked.to(dev), 1.0).cpu()
    check = "grouped_attention:decode" if sq == 1 else "grouped_attention:prefill"
    assert nmse(got, reference(q, k, v, blocked)) <= max_nmse(check, torch.float16), ops.paths
    round_robin = [t.repeat(1, 32 // GROUPS, 1, 1) for t in (k, v)]
    assert nmse(got, reference(q, *round_robin, blocked)) > 1e-2


@NEEDS_NPU
def test_npu_rmsnorm_and_swiglu_match_the_portable_ops():
    backend = AscendBackend()
    ops = backend.op_table(torch.float32)
    dev = backend.device()
    x, weight = torch.randn(4, 256) + 0.5, 1 + torch.randn(256) * 0.2
    want = TorchOps(torch.device("cpu"), torch.float64).rmsnorm(x.double(), weight.double(), 1e-5)
    assert nmse(ops.rmsnorm(x.to(dev), weight.to(dev), 1e-5).cpu(), want) <= max_nmse(
        "rmsnorm:weight-in-dtype", torch.float32
    ), ops.paths
    gate_up = torch.randn(4, 512)
    want = TorchOps(torch.device("cpu"), torch.float64).swiglu(gate_up.double())
    assert nmse(ops.swiglu(gate_up.to(dev)).cpu(), want) <= max_nmse("swiglu", torch.float32), ops.paths
