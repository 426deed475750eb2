"""torch's private weight-only CPU GEMM ops, each behind one checked function.

``aten::_weight_int8pack_mm`` and ``aten::_convert_weight_to_int4pack_for_cpu`` / ``aten::_weight_int4pack_mm_for_cpu``
are private: their names and signatures have changed between releases (pytorch#129940). Every call in glm-engine goes
through this module, which checks once that the op exists with the signature written here and otherwise raises a
BackendError naming the torch version, so a mismatch is one clear message at load instead of a crash mid-run.

Shape rules found by probing torch 2.13 (violating them gives NaN, garbage or a segfault, not an error), which the
callers meet by padding: int8 needs ``K`` to be a multiple of 16 with bf16 activations (``INT8_K_MULTIPLE`` keeps a
margin for other vector widths); int4 needs ``N`` to be a multiple of 16 and group sizes 32, 64, 128 or 256.
"""

from __future__ import annotations

import sys
import threading
from functools import cache

import torch

from glm_engine.errors import BackendError

INT8_K_MULTIPLE = 32  # in-features of an int8 weight are padded to this (torch 2.13 misbehaves unless K % 16 == 0)
INT4_N_MULTIPLE = 16  # out-features of an int4 weight are padded to this (the int4 packer's requirement)
INT4_GROUP_SIZES = (256, 128, 64, 32)  # group sizes the int4 kernel accepts, largest first

# Schemas these wrappers are written against (as in torch 2.13, the tested release).
_SCHEMAS = {
    "_weight_int8pack_mm": "aten::_weight_int8pack_mm(Tensor self, Tensor mat2, Tensor scales) -> Tensor",
    "_convert_weight_to_int4pack_for_cpu": (
        "aten::_convert_weight_to_int4pack_for_cpu(Tensor self, int innerKTiles) -> Tensor"
    ),
    "_weight_int4pack_mm_for_cpu": (
        "aten::_weight_int4pack_mm_for_cpu(Tensor self, Tensor mat2, int qGroupSize, Tensor qScaleAndZeros) -> Tensor"
    ),
}


@cache
def private_op(name: str) -> torch._ops.OpOverload:
    """The default overload of ``aten::<name>``, checked against the schema in ``_SCHEMAS``."""
    expected = _SCHEMAS[name]
    packet = getattr(torch.ops.aten, name, None)
    overload = getattr(packet, "default", None) if packet is not None else None
    found = str(overload._schema) if overload is not None else "missing"
    if found != expected:
        raise BackendError(
            f"torch {torch.__version__} does not provide {expected} (found: {found}); the CPU backend's quantized "
            "kernels need a torch release with it (2.13 is tested): install one, or load the model "
            "without quantization"
        )
    return overload


def int8_matmul(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``(x @ weight.T) * scales`` for ``x [M, K]``, int8 ``weight [N, K]`` and ``scales [N]`` in ``x``'s dtype.

    ``K`` must be a multiple of ``INT8_K_MULTIPLE``."""
    return private_op("_weight_int8pack_mm")(x, weight, scales)


def int4_pack(unsigned: torch.Tensor) -> torch.Tensor:
    """torch's CPU int4 layout (uint8 ``[N, K / 2]``) of int32 ``[N, K]`` values in 0..15; ``N % 16 == 0``."""
    return private_op("_convert_weight_to_int4pack_for_cpu")(unsigned.to(torch.int32).contiguous(), 1)


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, group_size: int, scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` with ``W[n, k] = (u[n, k] - 8) * scale[k // group_size, n] + zero[k // group_size, n]``.

    ``packed`` from :func:`int4_pack`; ``scales_and_zeros [K / group_size, N, 2]`` in ``x``'s dtype (scale, zero)."""
    return private_op("_weight_int4pack_mm_for_cpu")(x, packed, group_size, scales_and_zeros)


class _Operand(threading.local):
    """One per thread: the interleaved ``(scale, zero)`` buffer the int4 kernel reads, shared by every layer."""

    words: torch.Tensor | None = None  # int32: one (scale, zero) pair of 16-bit values per word


_OPERAND = _Operand()


def _words(numel: int) -> torch.Tensor:
    if _OPERAND.words is None or _OPERAND.words.numel() < numel:
        # A normal tensor even when first needed under torch.inference_mode(): an inference tensor could not be
        # written in place outside it later.
        with torch.inference_mode(False):
            _OPERAND.words = torch.empty(numel, dtype=torch.int32)
    return _OPERAND.words[:numel]


def int4_scales_and_zeros(scales: torch.Tensor, repeat: int = 1) -> torch.Tensor:
    """The kernel's ``[groups * repeat, N, 2]`` operand for 16-bit ``scales [groups, N]``, each group's scales repeated
    ``repeat`` times (a rowwise or wide-group scale over the kernel's groups), with zeros of 0.

    Symmetric formats need no zero point, so layers keep only their scales and the kernel's interleaved operand is
    written into one buffer per thread just before each product (docs/quantization.md#quantization-on-the-cpu):
    memory holds one layer's operand instead of a zero per group in every layer, and the operand is cache-hot when
    the kernel reads it. On a little-endian CPU a pair is one int32 word whose low half is the scale, so a zero of 0
    is one zero-extending copy of the scales' bits (measured on an AMD EPYC Zen 4, one thread, 1024x4096: 11-19 us
    against 0.22-0.23 ms for the product)."""
    groups, columns = scales.shape
    if sys.byteorder != "little":
        expanded = scales.repeat_interleave(repeat, dim=0)
        return torch.stack((expanded, torch.zeros_like(expanded)), dim=-1)
    words = _words(groups * repeat * columns)
    words.view(groups, repeat, columns).copy_(scales.view(torch.uint16)[:, None, :].expand(groups, repeat, columns))
    return words.view(scales.dtype).view(groups * repeat, columns, 2)
