"""The reference's weight-only quantization, bit for bit (docs/glm-semantics.md#weight-only-quantization-formula).

Per output row: ``scale = fp16(absmax / (2**(bits-1) - 1))`` and ``q = round_half_even(fp16(W / scale))``, so INT8
values lie in [-127, 127] and INT4 in [-7, 7]. INT4 packs two values per byte, the even column in the HIGH nibble.
Dequantization is the reference's extraction kernel: ``half(q) * scale``, a half-precision multiply.

A scale may also be ``[out, groups]``: one scale per equal block of input columns. That is how a row-parallel weight
quantized on each tensor-parallel rank's input slice (the reference's convert_tp) is represented once merged.
"""

from __future__ import annotations

import torch

from glm_engine.errors import CheckpointError

SUPPORTED_BITS = (4, 8)


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise CheckpointError(f"quantization bit width must be 4 or 8, got {bits}")


QUANTIZE_BLOCK_ELEMENTS = 1 << 24  # 32 MiB of fp16 at a time


def quantize_rowwise(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)``: int8 values ``[out, in]`` (not yet packed) and the fp16 per-row scale ``[out]``.

    Computed in fp16 like the reference (which quantizes the fp16 weight on the GPU); an all-zero row gets scale 0
    and, as in the reference, 0/0 is NaN there, so such rows are mapped to 0 explicitly.
    """
    _check_bits(bits)
    if weight.dim() != 2:
        raise CheckpointError(f"only 2-D weights are quantized, got shape {tuple(weight.shape)}")
    limit = 2 ** (bits - 1) - 1
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float16, device=weight.device)
    # In blocks of rows, each row's arithmetic unchanged: the temporaries (abs, quotient, rounding) stay one block's
    # size, not several copies of a weight as large as a 130528 x 4096 output layer (docs/checkpoints.md#memory).
    step = max(1, QUANTIZE_BLOCK_ELEMENTS // max(1, weight.shape[1]))
    for start in range(0, weight.shape[0], step):
        half = weight[start : start + step].to(torch.float16)
        block_scale = half.abs().amax(dim=-1) / limit
        block = torch.round(half / block_scale[:, None])
        # Identical to the reference wherever it is defined; a tiny (subnormal) fp16 scale can push |W/scale| past
        # 127.5, where a bare int8 cast would wrap around and flip the weight's sign, so saturate instead.
        q[start : start + step] = torch.nan_to_num(block, nan=0.0).clamp_(-limit, limit).to(torch.int8)
        scale[start : start + step] = block_scale
    return q, scale


def quantize_groupwise(weight: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` with one symmetric scale per ``group_size`` consecutive input columns: int8 values
    ``[out, in]`` and fp16 scales ``[out, in / group_size]``, by the reference's formula applied to each group (so a
    group spanning the whole row is exactly the reference's rowwise quantization)."""
    _check_bits(bits)
    if weight.dim() != 2 or group_size <= 0 or weight.shape[1] % group_size:
        raise CheckpointError(
            f"group size {group_size} must divide the input width of a 2-D weight, got shape {tuple(weight.shape)}"
        )
    out, columns = weight.shape
    q, scale = quantize_rowwise(weight.reshape(out * columns // group_size, group_size), bits)
    return q.view(out, columns), scale.view(out, columns // group_size)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two int4 values per int8 byte along the last dim: ``(q[..., 2k] << 4) | (q[..., 2k+1] & 0x0F)``."""
    if q.shape[-1] % 2:
        raise CheckpointError(f"INT4 packing needs an even number of columns, got {q.shape[-1]}")
    q = q.to(torch.int8)
    high, low = q[..., 0::2], q[..., 1::2]
    return ((high << 4) | (low & 0x0F)).to(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_int4``: arithmetic shifts recover the signed nibbles, even column from the high one."""
    packed = packed.to(torch.int8)
    high = packed >> 4
    low = (packed << 4) >> 4
    return torch.stack((high, low), dim=-1).flatten(-2)


def quantize(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored form: INT8 values, or INT4 values packed two per byte, plus the fp16 row scale."""
    q, scale = quantize_rowwise(weight, bits)
    return (pack_int4(q) if bits == 4 else q), scale


def dequantize(
    stored: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype = torch.float16
) -> torch.Tensor:
    """``half(q) * scale`` (in fp16, as the reference's kernels), then cast to ``dtype``.

    ``scale`` is ``[out]`` (one per row) or ``[out, groups]`` (one per equal block of input columns).
    """
    _check_bits(bits)
    q = unpack_int4(stored) if bits == 4 else stored
    if q.dtype != torch.int8:
        raise CheckpointError(f"quantized weights must be int8, got {q.dtype}")
    scale = scale.to(torch.float16)
    if scale.dim() == 1:
        scale = scale[:, None]
    out, columns = q.shape
    groups = scale.shape[1]
    if scale.shape[0] != out or columns % groups:
        raise CheckpointError(
            f"scale shape {tuple(scale.shape)} does not fit quantized weight [{out}, {columns}] ({bits}-bit)"
        )
    grouped = q.to(torch.float16).view(out, groups, columns // groups) * scale[:, :, None]
    return grouped.view(out, columns).to(dtype)


def stored_columns(in_features: int, bits: int) -> int:
    """Columns of the stored int8 tensor for a weight with ``in_features`` inputs (INT4: two per byte)."""
    _check_bits(bits)
    return in_features * bits // 8
