"""The CPU backend's integer dot-product linear (``csrc/int_dot.cpp``): int8 activations against INT4/INT8 weights.

The kernel quantizes each activation row per block of 32 columns (``scale = absmax / 127``, values rounded half to
even, as ggml's q8_0 activations) and sums integer products with VNNI ``vpdpbusd`` where the CPU has it, scaling each
block's int32 sum by ``weight scale * activation scale`` in fp32 (docs/quantization.md#the-integer-dot-product-kernel).
The weight bytes are the stored ones plus the fp16 scales: no zero point, no second copy.

Activation quantization moves results slightly: about 3e-5 NMSE per product against the exact product of the
dequantized weight (within the conformance bound of 1e-4 for ``linear:<format>``), but up to ~5e-4 on the tiny-model
logits, over the 2e-4 bound for quantized fp32/fp16 logits. So it is opt-in: ``GLM_ENGINE_CPU_INT_DOT=1`` makes it
the kernel of INT4 and INT8 groupwise weights; unset, torch's weight-only kernels (the reference semantics) run;
``GLM_ENGINE_CPU_INT_DOT=0`` also forbids building it when asked for by name.

It is a small C++ extension built on first use, never at import: only where a C++ compiler is present, and cached
under the user cache directory in a folder named by a hash of its source, the torch version and the CPU's flags (it
is compiled for the CPU it runs on). :func:`int_dot_linear_reference` is the same arithmetic in plain torch: the
tests' oracle for the kernel, and what :func:`int_dot_linear` runs without it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from glm_engine.backends.cpu.features import cpu_flags

SOURCE = Path(__file__).with_name("csrc") / "int_dot.cpp"
# "1" (on, true, yes): the default kernel of INT4 and INT8 groupwise; "0" (off, false, no): never built or loaded.
SWITCH_VARIABLE = "GLM_ENGINE_CPU_INT_DOT"
OP_NAMESPACE = "glm_engine_cpu"
EXTENSION_NAME = "glm_engine_int_dot"
BLOCK = 32  # input columns per activation scale and per weight block (as ggml's q8_0)
INT4_OFFSET, INT8_OFFSET = 8, 128  # the kernel's unsigned weight values are q + offset
_OFF_WORDS, _ON_WORDS = ("0", "off", "false", "no"), ("1", "on", "true", "yes")


@dataclass(frozen=True)
class ExtensionStatus:
    """Whether the compiled kernel runs here, and why (or why not); ``isa`` names its product instructions."""

    available: bool
    reason: str
    isa: str | None = None


def cache_root() -> Path:
    """Where built extensions are kept: ``$XDG_CACHE_HOME/glm-engine/cpu-extension`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "glm-engine" / "cpu-extension"


def build_key(source: str, torch_version: str, flags: frozenset[str] | set[str], machine: str) -> str:
    """The cache folder's name: any change of the source, torch, the CPU's flags or architecture builds anew."""
    digest = hashlib.sha256()
    for part in (source, torch_version, " ".join(sorted(flags)), machine):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def build_directory() -> Path:
    """This machine's build folder for the current source (with its compile flags), torch and CPU."""
    source = SOURCE.read_text() + "\n// compiled with: " + " ".join(_compile_flags())
    key = build_key(source, torch.__version__, cpu_flags(), platform.machine())
    return cache_root() / key


def find_compiler() -> str | None:
    """The C++ compiler torch's extension builder would use (``$CXX``, else ``c++``), if it is on the PATH."""
    return shutil.which(os.environ.get("CXX") or "c++")


def _switch() -> str:
    return os.environ.get(SWITCH_VARIABLE, "").strip().lower()


def disabled() -> bool:
    """``GLM_ENGINE_CPU_INT_DOT=0``: the extension is never built or loaded."""
    return _switch() in _OFF_WORDS


def requested() -> bool:
    """``GLM_ENGINE_CPU_INT_DOT=1``: the user opted in to the kernel (and its activation quantization)."""
    return _switch() in _ON_WORDS


def _compile_flags() -> list[str]:
    native = ["-march=native"] if platform.machine() in ("x86_64", "AMD64") else []
    return ["-O3", *native]


def build_extension(directory: Path, extra_flags: tuple[str, ...] = ()) -> str:
    """Compile (or reuse) the extension in ``directory``, load it into this process and return the product
    instructions it was compiled for (``avx512-vnni``, ``avx-vnni``, ``avx2`` or ``scalar``)."""
    from torch.utils import cpp_extension

    directory.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        EXTENSION_NAME,
        [str(SOURCE)],
        extra_cflags=[*_compile_flags(), *extra_flags],
        build_directory=str(directory),
        is_python_module=False,
        verbose=False,
    )
    return getattr(torch.ops, OP_NAMESPACE).int_dot_isa()


@functools.cache
def extension_status() -> ExtensionStatus:
    """Build (or find in the cache) and load the extension once per process; the answer says why not when not."""
    if disabled():
        return ExtensionStatus(False, f"disabled by {SWITCH_VARIABLE}={os.environ[SWITCH_VARIABLE]}")
    if find_compiler() is None:
        return ExtensionStatus(False, "no C++ compiler found ($CXX or c++ on the PATH)")
    directory = build_directory()
    try:
        isa = build_extension(directory)
    except Exception as error:  # a failed build must leave the torch kernels running, with the reason
        last = str(error).strip().splitlines()[-1:] or ["unknown error"]
        return ExtensionStatus(False, f"building {SOURCE.name} in {directory} failed: {last[0]}")
    return ExtensionStatus(True, f"built for this CPU ({isa}) in {directory}", isa)


def pack_int4_blocks(values: torch.Tensor) -> torch.Tensor:
    """The kernel's INT4 layout of int8 values ``[N, K]`` in [-8, 7]: uint8 ``[N, Kp / 2]`` with ``Kp`` = K rounded
    up to 32 (zero weights). Blocks of 32 columns go in pairs: 32 bytes whose byte j holds column j of the pair (low
    nibble) and column j + 32 (high), so one load and one shift unpack both; a row's final unpaired block is 16 bytes
    whose byte j holds its columns j (low) and j + 16 (high)."""
    out, columns = values.shape
    blocks = -(-columns // BLOCK)
    unsigned = (values.to(torch.int8) + INT4_OFFSET).view(torch.uint8)  # one byte per weight while re-laying
    unsigned = F.pad(unsigned, (0, blocks * BLOCK - columns), value=INT4_OFFSET)
    paired = blocks // 2 * 2 * BLOCK
    pairs = unsigned[:, :paired].reshape(out, blocks // 2, 2, BLOCK)
    parts = [(pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(out, paired // 2)]
    if blocks % 2:
        last = unsigned[:, paired:].reshape(out, 2, BLOCK // 2)
        parts.append(last[:, 0] | (last[:, 1] << 4))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0].contiguous()


def pack_int8_blocks(values: torch.Tensor) -> torch.Tensor:
    """The kernel's INT8 layout: the stored int8 bytes read as uint8 (a view when K is a multiple of 32)."""
    columns = values.shape[1]
    padding = -(-columns // BLOCK) * BLOCK - columns
    return (F.pad(values, (0, padding)) if padding else values).contiguous().view(torch.uint8)


def _unpack_blocks(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed values ``[N, Kp]`` of a layout made by :func:`pack_int4_blocks` / :func:`pack_int8_blocks`."""
    if bits == 8:
        return weight.view(torch.int8).to(torch.int32)
    out, blocks = weight.shape[0], weight.shape[1] * 2 // BLOCK
    paired = blocks // 2 * BLOCK  # bytes of the full pairs
    pairs = weight[:, :paired].reshape(out, blocks // 2, BLOCK).to(torch.int32)
    parts = [torch.stack((pairs & 0x0F, pairs >> 4), dim=2).reshape(out, -1)]
    if blocks % 2:
        last = weight[:, paired:].to(torch.int32)
        parts.append(torch.cat((last & 0x0F, last >> 4), dim=1))
    return torch.cat(parts, dim=1) - INT4_OFFSET


def quantize_activations(x: torch.Tensor, padded: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)``: fp32 rows ``[M, K]`` zero-padded to ``padded`` columns, quantized per block of 32 as the
    kernel does (``scale = absmax / 127`` in fp32, ``q = round_half_even(x / scale)``, 0 where the block is 0)."""
    rows = F.pad(x.float(), (0, padded - x.shape[1])).view(x.shape[0], -1, BLOCK)
    scale = rows.abs().amax(dim=-1) / 127
    q = torch.where(scale[..., None] > 0, torch.round(rows / scale[..., None]), 0.0)
    return q.to(torch.int32), scale


def int_dot_linear_reference(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """The kernel's arithmetic in plain torch (fp32 ``[M, N]``): ``sum_b dw * da * (integer block sum)`` equals the
    float64 product of ``q_a * da`` with ``q_w * dw`` (each expanded over its block), which is computed here; the
    kernel rounds each block's ``dw * da`` to fp32 and sums in fp32, so the two agree to fp32 rounding."""
    values = _unpack_blocks(weight, bits)
    padded = values.shape[1]
    q, act_scale = quantize_activations(x, padded)
    activations = (q.double() * act_scale.double()[..., None]).reshape(x.shape[0], padded)
    weight_scale = scales.double().repeat_interleave(padded // scales.shape[1], dim=1)
    return (activations @ (values.double() * weight_scale).T).float()


def int_dot_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """``x [M, K]`` (any float dtype) times a packed weight (``pack_int4_blocks`` / ``pack_int8_blocks``) with fp16
    ``scales [N, groups]`` (each group whole blocks of 32): fp32 ``[M, N]``, compiled where possible."""
    if extension_status().available:
        return getattr(torch.ops, OP_NAMESPACE).int_dot_linear(x, weight, scales, bits)
    return int_dot_linear_reference(x, weight, scales, bits)
