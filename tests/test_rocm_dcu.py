"""The rocm_dcu backend's own logic, without a GPU: arch-name parsing, AMD vs Hygon, attention and Triton choices."""

from __future__ import annotations

import pytest
import torch

from glm_engine.backends.registry import get_backend
from glm_engine.backends.rocm_dcu.arch import Vendor, base_arch, classify, describe, has_fused_sdpa
from glm_engine.backends.rocm_dcu.ops import RocmOps, rocm_policy
from glm_engine.backends.torch_cuda.attention import AttentionPath
from glm_engine.kernels.triton.configs import choose_decode_attention_config
from glm_engine.ops.interface import Op


@pytest.mark.parametrize(
    ("arch", "name", "vendor", "family"),
    [
        ("gfx908:sramecc+:xnack-", "AMD Instinct MI100", Vendor.AMD_INSTINCT, "MI100"),
        ("gfx90a:sramecc+:xnack-", "AMD Instinct MI250X", Vendor.AMD_INSTINCT, "MI200"),
        ("gfx942:sramecc+:xnack-", "AMD Instinct MI300X", Vendor.AMD_INSTINCT, "MI300"),
        ("gfx950", "AMD Instinct MI355X", Vendor.AMD_INSTINCT, "MI350"),
        ("gfx906:sramecc-:xnack-", "AMD Radeon Instinct MI60", Vendor.AMD_INSTINCT, "MI50"),
        ("gfx906", "DCU Z100L", Vendor.HYGON_DCU, "Z100"),  # same ISA as MI50: the name decides
        ("gfx928", "K100_AI DCU", Vendor.HYGON_DCU, "K100"),
        ("gfx928", "", Vendor.HYGON_DCU, "K100"),  # the arch alone is Hygon's
        ("gfx936", "BW DCU", Vendor.HYGON_DCU, "K100_AI/BW"),
        ("gfx1100", "Radeon RX 7900 XTX", Vendor.AMD_OTHER, "RDNA"),
        ("gfx999", "DCU Future", Vendor.HYGON_DCU, "unlisted DCU"),
        ("", "", Vendor.UNKNOWN, "no architecture name"),
    ],
)
def test_vendor_and_family_from_arch_and_name(arch, name, vendor, family):
    facts = classify(arch, name)
    assert facts.vendor is vendor and family in facts.family


def test_arch_names_lose_their_feature_flags_and_uncertain_mappings_say_so():
    assert base_arch("gfx90a:sramecc+:xnack-") == "gfx90a" and base_arch("GFX942") == "gfx942"
    assert base_arch("Vega 20") == ""
    assert describe("gfx90a:sramecc+:xnack-") == "gfx90a, AMD Instinct MI200 (CDNA2)"
    assert describe("gfx938", "DCU BW1000").endswith("(mapping unconfirmed)")
    assert "unconfirmed" not in describe("gfx928", "DCU K100")


def test_fused_sdpa_only_on_archs_with_aotriton_kernels():
    assert has_fused_sdpa("gfx90a:sramecc+:xnack-") and has_fused_sdpa("gfx942") and has_fused_sdpa("gfx950")
    assert not has_fused_sdpa("gfx908") and not has_fused_sdpa("gfx1100")
    assert not has_fused_sdpa("gfx936", "DCU K100_AI") and not has_fused_sdpa("gfx906", "DCU Z100")


def test_rocm_attention_policy_per_arch():
    mi300 = rocm_policy("gfx942:sramecc+:xnack-", "AMD Instinct MI300X", True, "triton available")
    assert mi300.prefill is AttentionPath.SDPA and "AOTriton" in mi300.prefill_reason
    assert mi300.choose(1, 128, torch.float16)[0] is AttentionPath.TRITON_DECODE
    dcu = rocm_policy("gfx928", "DCU K100_AI", True, "triton available")
    assert dcu.prefill is AttentionPath.REFERENCE and "Hygon DCU" in dcu.prefill_reason
    assert dcu.choose(1, 128, torch.bfloat16)[0] is AttentionPath.TRITON_DECODE
    assert dcu.choose(1, 128, torch.float32)[0] is AttentionPath.REFERENCE
    no_triton = rocm_policy("gfx908", "AMD Instinct MI100", False, "triton is not installed")
    path, why = no_triton.choose(1, 128, torch.float16)
    assert path is AttentionPath.REFERENCE and "not installed" in why


def test_rocm_triton_configs_use_wavefront_64():
    assert choose_decode_attention_config(12, 2048, platform="hip").num_warps == 2
    assert choose_decode_attention_config(12, 2048, platform="cuda").num_warps == 4


def test_rocm_op_table_without_a_device_takes_the_portable_prefill():
    ops = RocmOps(torch.device("cpu"), torch.float16)
    assert ops.platform == "hip" and ops.policy.prefill is AttentionPath.REFERENCE


def test_rocm_dcu_uses_rccl_through_the_nccl_name_and_explains_attention():
    backend = get_backend("rocm_dcu")
    assert backend.dist_backend == "nccl"
    assert backend.ops_class is RocmOps
    note = backend.supports(Op.ATTENTION, torch.float16).reason
    assert note.startswith("prefill: ") and "decode: " in note


def test_backends_listing_shows_free_of_total_memory():
    from glm_engine.cli.backends import _memory

    assert _memory({"memory_bytes": 80 * 2**30, "free_memory_bytes": 60 * 2**30}) == "60.0 / 80.0 GiB free"
    assert _memory({"memory_bytes": 80 * 2**30, "free_memory_bytes": None}) == "80.0 GiB"
