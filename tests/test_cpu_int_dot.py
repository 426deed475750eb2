"""The CPU backend's integer dot-product kernel (int8 activations, VNNI): its pure-torch twin, the compiled kernel
against the twin, the opt-in switch, the build cache and the fallback without a compiler."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch
from bounds import max_nmse, nmse

from glm_engine.backends.cpu import int_dot
from glm_engine.backends.cpu.quant_linear import (
    INT_DOT_KERNEL,
    TORCH_KERNELS,
    IntDotLinear,
    default_cpu_quant_kernel,
    prepare_cpu_quantized,
)
from glm_engine.quant.formats import QuantFormat
from glm_engine.quant.weight import QuantizedWeight

# (out, in, group): in-features not a multiple of 32 (rowwise only: groups must divide the width), one block, several
# groups, a real width; out not a multiple of the kernel's 16-row work split.
CASES = [
    (37, 100, None),
    (33, 96, None),
    (20, 32, None),
    (64, 256, 32),
    (19, 384, 64),
    (48, 512, 128),
    (24, 4096, 128),
    (16, 4096, None),
]
ROWS = (1, 3, 5)  # one row, fewer than the kernel's 4-row tile, a tile plus a tail


def quantized(out: int, columns: int, bits: int, group: int | None, seed: int = 0) -> QuantizedWeight:
    w = torch.randn(out, columns, generator=torch.Generator().manual_seed(seed)) / columns**0.5
    return QuantizedWeight.quantize(w, bits, group)


def packed(weight: QuantizedWeight) -> torch.Tensor:
    values = weight.values()
    return int_dot.pack_int4_blocks(values) if weight.bits == 4 else int_dot.pack_int8_blocks(values)


def compiled() -> int_dot.ExtensionStatus:
    status = int_dot.extension_status()
    if not status.available:
        pytest.skip(f"the integer dot-product extension is not built here: {status.reason}")
    return status


def test_int4_layout_pairs_blocks_and_keeps_a_final_odd_block_whole():
    """Pairs of blocks: byte j holds column j (low) and j + 32 (high); a final unpaired block: j and j + 16."""
    values = (torch.arange(96, dtype=torch.int8) % 15 - 7).reshape(1, 96)  # three blocks: a pair and one more
    layout = int_dot.pack_int4_blocks(values)
    assert layout.shape == (1, 48) and layout.dtype == torch.uint8
    assert layout[0, 0] == (values[0, 0] + 8) | ((values[0, 32] + 8) << 4)
    assert layout[0, 31] == (values[0, 31] + 8) | ((values[0, 63] + 8) << 4)
    assert layout[0, 32] == (values[0, 64] + 8) | ((values[0, 80] + 8) << 4)
    assert torch.equal(int_dot._unpack_blocks(layout, 4), values.int())


def test_ragged_in_features_are_padded_with_zero_weights():
    values = torch.full((2, 40), -7, dtype=torch.int8)
    for bits in (4, 8):
        layout = int_dot.pack_int4_blocks(values) if bits == 4 else int_dot.pack_int8_blocks(values)
        unpacked = int_dot._unpack_blocks(layout, bits)
        assert unpacked.shape == (2, 64)
        assert torch.equal(unpacked[:, :40], values.int()) and not unpacked[:, 40:].any()


def test_activations_are_quantized_per_block_of_32_like_q8_0():
    x = torch.zeros(1, 70)
    x[0, :32] = torch.linspace(-2.0, 1.0, 32)
    x[0, 64:] = 0.5
    q, scale = int_dot.quantize_activations(x, 96)
    assert torch.allclose(scale, torch.tensor([[2.0 / 127, 0.0, 0.5 / 127]]))
    assert q[0, 0, 0] == -127 and q[0, 1].abs().sum() == 0  # the absmax maps to 127; an all-zero block to 0
    assert torch.equal(q[0, 2, :6], torch.full((6,), 127, dtype=torch.int32)) and not q[0, 2, 6:].any()
    assert torch.equal(q[0, 0], torch.round(x[0, :32] / scale[0, 0]).int())  # round half to even, as the kernel


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(("out", "columns", "group"), CASES)
def test_compiled_kernel_matches_its_pure_torch_twin(bits, out, columns, group):
    """Same integer sums, same scales; only the order of the fp32 sums differs (a wrong nibble, offset, tile or
    tail gives NMSE of order 1)."""
    compiled()
    weight = quantized(out, columns, bits, group)
    layout = packed(weight)
    for rows in ROWS:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            x = torch.randn(rows, columns, generator=torch.Generator().manual_seed(rows)).to(dtype)
            got = torch.ops.glm_engine_cpu.int_dot_linear(x, layout, weight.scale, bits)
            assert got.dtype == torch.float32 and got.shape == (rows, out)
            assert nmse(got, int_dot.int_dot_linear_reference(x, layout, weight.scale, bits)) <= 1e-11


@pytest.mark.parametrize("fmt", sorted(int_dot_fmt.value for int_dot_fmt in QuantFormat))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int_dot_layers_stay_within_the_linear_bound(fmt, dtype):
    """Activation quantization is the only extra error: measured 2-4e-5 NMSE against the exact product of the
    dequantized weight here, under the conformance bound for ``linear:<format>`` (1e-4), compiled or not."""
    quant_format = QuantFormat(fmt)
    bits = 4 if "int4" in fmt else 8
    for out, columns, group in CASES:
        if (group is None) != (quant_format in (QuantFormat.INT4_ROWWISE, QuantFormat.INT8_ROWWISE)):
            continue
        weight = quantized(out, columns, bits, group, seed=5)
        layer = prepare_cpu_quantized(weight, INT_DOT_KERNEL)
        assert isinstance(layer, IntDotLinear)
        x = torch.randn(2, 3, columns, generator=torch.Generator().manual_seed(6)).to(dtype)
        got = layer(x)
        assert got.dtype == dtype and got.shape == (2, 3, out)
        assert nmse(got, x.double() @ weight.dequantize(torch.float64).T) <= max_nmse(f"linear:{fmt}", dtype)


LAYOUT_CASES = [(INT_DOT_KERNEL, 4, None), (INT_DOT_KERNEL, 4, 32), (INT_DOT_KERNEL, 4, 128)]
LAYOUT_CASES += [(INT_DOT_KERNEL, 8, None), (INT_DOT_KERNEL, 8, 32), (INT_DOT_KERNEL, 8, 64)]
# torch's kernels: INT8 groupwise keeps the (scale, zero) operand of its two-halves split (quant_linear.py says why)
LAYOUT_CASES += [(TORCH_KERNELS, 4, None), (TORCH_KERNELS, 4, 32), (TORCH_KERNELS, 4, 128), (TORCH_KERNELS, 8, None)]


@pytest.mark.parametrize(("kernel", "bits", "group"), LAYOUT_CASES)
def test_runtime_layouts_hold_one_scale_per_group_and_no_zero_point(kernel, bits, group):
    """Bytes in memory = the values (padded where a kernel needs it) + one 2-byte scale per row and group."""
    weight = quantized(40, 256, bits, group)
    assert weight.nbytes == weight.stored.numel() + 2 * weight.out_features * weight.groups  # at rest: no zero
    layer = prepare_cpu_quantized(weight, kernel)
    values = getattr(layer, "packed", None)  # torch's int4 kernel layout
    values = layer.values if values is None else values
    assert layer.nbytes == values.numel() * values.element_size() + layer.scales.numel() * 2
    assert layer.scales.element_size() == 2
    assert layer.scales.numel() == weight.groups * values.shape[0]  # per (padded) row: never a repeat or a zero


def test_the_reference_kernels_stay_the_default_unless_the_user_opts_in(monkeypatch):
    monkeypatch.delenv(int_dot.SWITCH_VARIABLE, raising=False)
    assert all(default_cpu_quant_kernel(f) == TORCH_KERNELS for f in QuantFormat)
    monkeypatch.setenv(int_dot.SWITCH_VARIABLE, "1")
    assert default_cpu_quant_kernel(QuantFormat.INT8_ROWWISE) == TORCH_KERNELS
    expected = INT_DOT_KERNEL if int_dot.extension_status().available else TORCH_KERNELS
    assert default_cpu_quant_kernel(QuantFormat.INT4_GROUPWISE) == expected


def test_build_key_changes_with_source_torch_flags_and_machine():
    base = ("src", "2.13.0", frozenset({"avx2", "fma"}), "x86_64")
    key = int_dot.build_key(*base)
    assert key == int_dot.build_key("src", "2.13.0", {"fma", "avx2"}, "x86_64")
    for i, other in enumerate(("src2", "2.14.0", frozenset({"avx2", "fma", "avx512_vnni"}), "aarch64")):
        changed = list(base)
        changed[i] = other
        assert int_dot.build_key(*changed) != key


def test_build_directory_lives_in_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    directory = int_dot.build_directory()
    assert directory.parent == tmp_path / "glm-engine" / "cpu-extension"
    source = int_dot.SOURCE.read_text() + "\n// compiled with: " + " ".join(int_dot._compile_flags())
    assert directory.name == int_dot.build_key(source, torch.__version__, int_dot.cpu_flags(), platform.machine())


@pytest.fixture
def fresh_status():
    int_dot.extension_status.cache_clear()
    yield
    int_dot.extension_status.cache_clear()


def test_without_a_compiler_the_twin_and_the_torch_kernels_run(monkeypatch, tmp_path, fresh_status):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler-glm-engine")
    monkeypatch.setenv(int_dot.SWITCH_VARIABLE, "1")
    status = int_dot.extension_status()
    assert not status.available and "no C++ compiler" in status.reason
    assert not (tmp_path / "glm-engine").exists()
    assert default_cpu_quant_kernel(QuantFormat.INT4_ROWWISE) == TORCH_KERNELS
    weight = quantized(8, 64, 4, 32)
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    got = int_dot.int_dot_linear(x, packed(weight), weight.scale, 4)
    assert torch.equal(got, int_dot.int_dot_linear_reference(x, packed(weight), weight.scale, 4))


def test_the_switch_set_to_0_never_builds(monkeypatch, tmp_path, fresh_status):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv(int_dot.SWITCH_VARIABLE, "0")
    status = int_dot.extension_status()
    assert not status.available and status.reason == f"disabled by {int_dot.SWITCH_VARIABLE}=0"
    assert not (tmp_path / "glm-engine").exists()


def test_importing_and_loading_with_default_settings_builds_nothing(tmp_path):
    script = textwrap.dedent(
        """
        import torch
        from glm_engine.backends.cpu import CpuBackend
        from glm_engine.backends.registry import op_table_for
        from glm_engine.quant.weight import QuantizedWeight
        ops = op_table_for(CpuBackend(), torch.bfloat16)
        layer = ops.prepare_quantized(QuantizedWeight.quantize(torch.randn(16, 64), 4, 32))
        print(type(layer).__name__)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != int_dot.SWITCH_VARIABLE}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Int4Linear"
    assert not (tmp_path / "glm-engine").exists()


# Flags that take away VNNI (the vpmaddubsw path) and AVX2 (the scalar loop) from a native build.
ISA_FLAGS = {"avx2": ("-mno-avx512vnni", "-mno-avxvnni"), "scalar": ("-mno-avx2", "-mno-f16c", "-mno-fma")}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the ISA variants are x86-64 builds")
@pytest.mark.parametrize("isa", sorted(ISA_FLAGS))
def test_the_portable_product_paths_match_the_twin(isa, tmp_path):
    """Built in a separate process (the op namespace is registered once per process) with the faster ISAs turned
    off, each path must give the twin's sums."""
    compiled()
    script = textwrap.dedent(
        f"""
        import pathlib, torch
        from glm_engine.backends.cpu import int_dot
        from glm_engine.quant.weight import QuantizedWeight
        print(int_dot.build_extension(pathlib.Path({str(tmp_path)!r}), {ISA_FLAGS[isa]!r}))
        worst = 0.0
        for bits in (4, 8):
            for out, columns, group in ((37, 100, None), (19, 384, 64)):
                w = QuantizedWeight.quantize(torch.randn(out, columns), bits, group)
                values = w.values()
                layout = int_dot.pack_int4_blocks(values) if bits == 4 else int_dot.pack_int8_blocks(values)
                for rows in (1, 5):
                    x = torch.randn(rows, columns)
                    got = torch.ops.glm_engine_cpu.int_dot_linear(x, layout, w.scale, bits)
                    ref = int_dot.int_dot_linear_reference(x, layout, w.scale, bits)
                    worst = max(worst, float(((got - ref) ** 2).sum() / (ref**2).sum()))
        print(worst)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    reported_isa, worst = done.stdout.split()
    assert reported_isa == isa
    assert float(worst) <= 1e-11
