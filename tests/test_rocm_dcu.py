"""The rocm_dcu backend's own logic, without a GPU: arch-name parsing, AMD vs Hygon, attention and Triton choices,
which architectures the Triton kernels compile for and which compute in bf16 (``torch.cuda`` stood in for)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import glm_engine.backends.rocm_dcu.ops as rocm_ops
import glm_engine.backends.torch_cuda.backend as torch_cuda_backend
from glm_engine.backends.base import Verdict
from glm_engine.backends.registry import get_backend
from glm_engine.backends.rocm_dcu import RocmDcuBackend
from glm_engine.backends.rocm_dcu.arch import (
    Vendor,
    base_arch,
    bf16_reason,
    classify,
    describe,
    has_bf16,
    has_fused_sdpa,
    parse_version,
    triton_target,
)
from glm_engine.backends.rocm_dcu.ops import RocmOps, rocm_policy, rocm_triton_verdict
from glm_engine.backends.torch_cuda.attention import AttentionPath
from glm_engine.kernels.triton import triton_verdict
from glm_engine.kernels.triton.configs import choose_decode_attention_config
from glm_engine.ops.interface import Op
from glm_engine.ops.torch_ops import DequantizingLinear
from glm_engine.quant.weight import QuantizedWeight


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


# --- which architectures the Triton kernels compile for (issue 19, ROCm 1) ---


@pytest.mark.parametrize(
    ("arch", "name", "version", "hcu", "ok", "says"),
    [
        ("gfx90a:sramecc+:xnack-", "AMD Instinct MI250X", "3.1.0", False, True, "targets"),
        ("gfx942", "AMD Instinct MI300X", "3.3.1+gitabcdef", False, True, "targets"),
        ("gfx1100", "Radeon RX 7900 XTX", "3.2.0", False, True, "targets"),
        ("gfx906:sramecc-:xnack-", "AMD Radeon Instinct MI60", "3.7.1", False, False, "3.8 or newer"),
        ("gfx906", "AMD Instinct MI50", "3.8.0", False, True, "targets"),
        ("gfx906", "DCU Z100L", "3.9.0", False, False, "Hygon's DTK"),
        ("gfx928", "DCU K100_AI", "3.0.0", False, False, "Hygon's DTK"),
        ("gfx928", "DCU K100_AI", "3.0.0", True, True, "hcu backend"),
        ("gfx803", "Radeon RX 580", "3.9.0", False, False, "does not target"),
        ("gfx1030", "Radeon RX 6800 XT", "3.9.0", False, False, "does not target"),
    ],
)
def test_triton_target_per_architecture(arch, name, version, hcu, ok, says):
    got, why = triton_target(arch, name, version, hcu)
    assert got is ok and says in why


def test_triton_versions_parse_to_major_minor():
    assert parse_version("3.8.0") == (3, 8) and parse_version("3.10.1+rocm6.2") == (3, 10)
    assert parse_version("pytorch-triton") == (0, 0)


@pytest.fixture
def triton_present(monkeypatch):
    """triton imports here as ``version``, with or without Hygon's backend: set by the returned function."""

    def present(version: str, hcu: bool = False) -> None:
        monkeypatch.setattr(rocm_ops, "triton_verdict", lambda: (True, "triton available"))
        monkeypatch.setattr(torch_cuda_backend, "triton_verdict", lambda: (True, "triton available"))
        monkeypatch.setattr(rocm_ops, "installed_triton_version", lambda: version)
        monkeypatch.setattr(rocm_ops, "hygon_triton_backend", lambda: hcu)

    return present


def test_an_arch_triton_does_not_target_falls_back_with_the_reason(monkeypatch, triton_present):
    """gfx906 with Triton 3.7: decode attention takes the prefill path and quantized weights are dequantized per
    product, each saying why, instead of the first decode step failing to compile."""
    triton_present("3.7.1")
    monkeypatch.setattr(rocm_ops, "device_arch", lambda device: ("gfx906:sramecc-:xnack-", "AMD Instinct MI50"))
    assert not rocm_triton_verdict("gfx906", "AMD Instinct MI50")
    ops = RocmOps(torch.device("cpu"), torch.float16)
    path, why = ops.policy.choose(1, 128, torch.float16)
    assert path is AttentionPath.REFERENCE and "Triton 3.8 or newer" in why
    weight = QuantizedWeight.quantize(torch.randn(16, 64), 8, None)
    assert isinstance(ops.prepare_quantized(weight), DequantizingLinear)
    assert "dequantize per product" in ops.quant_path["int8-rowwise"] and "gfx906" in ops.quant_path["int8-rowwise"]


@pytest.mark.skipif(not triton_verdict()[0], reason=f"needs triton: {triton_verdict()[1]}")
def test_an_arch_triton_targets_keeps_the_triton_paths(monkeypatch, triton_present):
    triton_present("3.8.0")
    monkeypatch.setattr(rocm_ops, "device_arch", lambda device: ("gfx906", "AMD Instinct MI50"))
    ops = RocmOps(torch.device("cpu"), torch.float16)
    assert ops.policy.choose(1, 128, torch.float16)[0] is AttentionPath.TRITON_DECODE
    weight = QuantizedWeight.quantize(torch.randn(16, 64), 8, None)
    assert not isinstance(ops.prepare_quantized(weight), DequantizingLinear)
    assert ops.quant_path["int8-rowwise"] == "fused Triton dequant-GEMM"


def test_without_a_hip_device_only_the_import_is_checked(triton_present):
    triton_present("3.0.0")
    assert rocm_triton_verdict("", "")  # CPU tensors under the interpreter: no architecture to check


def hip_devices(monkeypatch, *devices: tuple[str, str]) -> RocmDcuBackend:
    """A rocm_dcu backend that sees ``devices`` (gcnArchName, name), as on a HIP build with those GPUs."""
    props = [SimpleNamespace(gcnArchName=arch, name=name, multi_processor_count=60) for arch, name in devices]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(props))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i if isinstance(i, int) else 0])
    backend = RocmDcuBackend()
    backend.availability = lambda: Verdict(True, "stood in")
    return backend


def test_supports_says_when_quantized_linears_are_dequantized_for_the_arch(monkeypatch, triton_present):
    triton_present("3.7.1")
    backend = hip_devices(monkeypatch, ("gfx906", "AMD Instinct MI50"))
    note = backend.supports(Op.LINEAR, torch.float16, "int4-groupwise").reason
    assert note.startswith("dequantized to torch.float16 per product") and "gfx906" in note
    triton_present("3.1.0")
    backend = hip_devices(monkeypatch, ("gfx942", "AMD Instinct MI300X"))
    assert "fused Triton" in backend.supports(Op.LINEAR, torch.float16, "int4-groupwise").reason


# --- bf16 from the architecture (issue 19, ROCm 2) ---


@pytest.mark.parametrize(
    ("arch", "name", "bf16"),
    [
        ("gfx906:sramecc-:xnack-", "AMD Radeon Instinct MI60", False),
        ("gfx906", "DCU Z100L", False),
        ("gfx908", "AMD Instinct MI100", True),
        ("gfx90a:sramecc+:xnack-", "AMD Instinct MI250X", True),
        ("gfx942", "AMD Instinct MI300X", True),
        ("gfx950", "AMD Instinct MI355X", True),
        ("gfx1100", "Radeon RX 7900 XTX", True),
        ("gfx1201", "Radeon RX 9070 XT", True),
        ("gfx1030", "Radeon RX 6800 XT", False),
        ("gfx928", "DCU K100_AI", False),  # no public source confirms it
    ],
)
def test_bf16_by_architecture(arch, name, bf16):
    assert has_bf16(arch, name) is bf16
    assert (bf16_reason(arch, name) == "") is bf16


def test_bf16_is_offered_only_when_every_device_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what every HIP build says
    mi300 = hip_devices(monkeypatch, ("gfx942", "AMD Instinct MI300X"), ("gfx90a", "AMD Instinct MI250X"))
    assert torch.bfloat16 in mi300.supported_dtypes() and mi300.supports(Op.LINEAR, torch.bfloat16)
    mixed = hip_devices(monkeypatch, ("gfx90a", "AMD Instinct MI250X"), ("gfx906", "AMD Instinct MI50"))
    assert mixed.supported_dtypes() == (torch.float16, torch.float32)
    verdict = mixed.supports(Op.LINEAR, torch.bfloat16)
    assert not verdict and "gfx906" in verdict.reason and "use fp16" in verdict.reason
    assert mixed.supports(Op.LINEAR, torch.float16)
