"""The HIP Triton tiles fit the LDS of every AMD/Hygon architecture they run on, checked from the tables alone.

``configs.shared_memory_bytes`` counts a program's shared memory from its tile sizes, pipeline stages and dtypes;
``arch.lds_bytes`` is the LDS one workgroup may use on each architecture (64 KiB, 160 KiB on gfx950). Every HIP
configuration ``choose_config`` can return must stay within ``LDS_BUDGET`` of it, leaving the rest to the compiler.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from glm_engine.backends.rocm_dcu.arch import DEFAULT_LDS_BYTES, KIB, TRITON_ARCHES, lds_bytes
from glm_engine.kernels.triton.configs import LDS_BUDGET, Variant, choose_config, shared_memory_bytes

# Every arch the Triton kernels may run on: upstream Triton's AMD targets, RDNA3/4 examples and Hygon's DCUs (with
# Hygon's Triton).
ARCHES = [*sorted(TRITON_ARCHES), "gfx1100", "gfx1201", "gfx928", "gfx936"]
ROWS = [1, 2, 3, 4, 5, 17, 64, 65, 128, 4096]
FORMATS = [(8, None), (8, 32), (8, 128), (4, None), (4, 32), (4, 64), (4, 128)]


def hip_configs():
    """Every distinct HIP configuration of a GLM-130B-sized product, by rows and weight format."""
    seen = {}
    for m in ROWS:
        for bits, group_size in FORMATS:
            config = choose_config(m, 12288, 12288, bits, group_size, platform="hip")
            seen[(replace(config, split_k=1), bits)] = (m, group_size)
    return seen


@pytest.mark.parametrize("arch", ARCHES)
def test_every_hip_tile_fits_its_arch_lds_with_margin(arch):
    budget = LDS_BUDGET * lds_bytes(arch)
    for (config, bits), (m, group_size) in hip_configs().items():
        used = shared_memory_bytes(config, bits, activation_bytes=2)  # fp16 and bf16 alike
        assert used <= budget, f"{arch}: M={m} INT{bits} groups={group_size} {config} needs {used} B > {budget:.0f} B"


def test_the_former_hip_prefill_tile_filled_the_whole_lds_of_mi200_and_mi300():
    """128x128x64 in two stages: 2 x (16 KiB fp16 A + 8 KiB int8 B) + 16 KiB of B in fp16 = 64 KiB, all of it."""
    former = replace(choose_config(128, 12288, 12288, 8, None, platform="hip"), block_k=64)
    assert shared_memory_bytes(former, 8) == 64 * KIB == lds_bytes("gfx942:sramecc+:xnack-") == lds_bytes("gfx90a")
    assert shared_memory_bytes(former, 8) > LDS_BUDGET * lds_bytes("gfx942")


def test_shared_memory_is_counted_from_tiles_stages_and_dtypes():
    prefill = choose_config(128, 12288, 12288, 4, None, platform="hip")
    assert prefill.variant is Variant.PREFILL and (prefill.block_m, prefill.block_n, prefill.block_k) == (128, 128, 32)
    # 2 stages x (128x32 fp16 A + 16x128 packed INT4 bytes) + 32x128 fp16 operand; the 128x128 fp16 epilogue is 32 KiB
    assert shared_memory_bytes(prefill, 4) == max(2 * (8 * KIB + 2 * KIB) + 8 * KIB, 32 * KIB)
    decode = choose_config(1, 12288, 12288, 8, None, platform="hip")
    # 2 stages x (64x128 int8 weight + 1x128 fp16 row) + 1x64 fp32 partials
    assert shared_memory_bytes(decode, 8) == 2 * (8 * KIB + 256) + 256
    assert shared_memory_bytes(decode, 8, activation_bytes=4) > shared_memory_bytes(decode, 8)


def test_lds_per_arch():
    assert lds_bytes("gfx950") == 160 * KIB
    assert lds_bytes("gfx942:sramecc+:xnack-") == lds_bytes("gfx906") == lds_bytes("gfx928") == DEFAULT_LDS_BYTES
    assert DEFAULT_LDS_BYTES == 64 * KIB
