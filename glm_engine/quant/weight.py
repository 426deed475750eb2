"""A quantized linear weight in glm-engine's stored form, the one contract between quantizers, checkpoints and
backends (which convert it into their runtime layouts when a model loads).

``stored`` is int8 ``[out, in]`` for INT8, or INT4 packed two per byte ``[out, in / 2]`` with the even column in the
high nibble (the reference's layout); ``scale`` is fp16 ``[out, groups]``, each group covering ``in / groups``
consecutive input columns. One group is the reference's rowwise format; more are groupwise. The value of element
``(r, c)`` is ``half(q[r, c]) * scale[r, c // group_size]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glm_engine.errors import CheckpointError
from glm_engine.quant.formats import QuantFormat
from glm_engine.quant.reference import dequantize, pack_int4, quantize_groupwise, unpack_int4

GROUP_SIZES = (32, 64, 128)  # groupwise block sizes offered by ``glm-engine quantize`` and ``--quant-group-size``


@dataclass(frozen=True)
class QuantizedWeight:
    """Weight-only quantized ``[out, in]`` matrix: stored values plus fp16 scales per row (and input group)."""

    stored: torch.Tensor
    scale: torch.Tensor
    bits: int

    def __post_init__(self) -> None:
        if self.bits not in (4, 8) or self.stored.dtype != torch.int8 or self.stored.dim() != 2:
            raise CheckpointError(
                f"a quantized weight is 2-D int8 with 4 or 8 bits, got {self.stored.dtype} "
                f"{tuple(self.stored.shape)} at {self.bits} bits"
            )
        if self.scale.dim() != 2 or self.scale.shape[0] != self.stored.shape[0] or self.in_features % self.groups:
            raise CheckpointError(
                f"scales {tuple(self.scale.shape)} do not fit a [{self.out_features}, {self.in_features}] weight"
            )

    @classmethod
    def quantize(cls, weight: torch.Tensor, bits: int, group_size: int | None = None) -> QuantizedWeight:
        """Quantize a floating-point ``[out, in]`` weight: rowwise (``group_size`` None) or groupwise."""
        q, scale = quantize_groupwise(weight, bits, group_size or weight.shape[1])
        return cls.from_values(q, scale, bits)

    @classmethod
    def from_values(cls, q: torch.Tensor, scale: torch.Tensor, bits: int) -> QuantizedWeight:
        """From unpacked int8 values ``[out, in]`` and scales ``[out]`` or ``[out, groups]``."""
        stored = pack_int4(q) if bits == 4 else q.to(torch.int8)
        scale = scale.to(torch.float16)
        return cls(stored.contiguous(), (scale[:, None] if scale.dim() == 1 else scale).contiguous(), bits)

    @property
    def out_features(self) -> int:
        return self.stored.shape[0]

    @property
    def in_features(self) -> int:
        return self.stored.shape[1] * (2 if self.bits == 4 else 1)

    @property
    def groups(self) -> int:
        return self.scale.shape[1]

    @property
    def group_size(self) -> int:
        return self.in_features // self.groups

    @property
    def format(self) -> QuantFormat:
        rowwise = self.groups == 1
        if self.bits == 8:
            return QuantFormat.INT8_ROWWISE if rowwise else QuantFormat.INT8_GROUPWISE
        return QuantFormat.INT4_ROWWISE if rowwise else QuantFormat.INT4_GROUPWISE

    @property
    def nbytes(self) -> int:
        return self.stored.numel() + self.scale.numel() * 2

    def values(self) -> torch.Tensor:
        """The int8 values ``[out, in]`` (INT4 unpacked to [-8, 7])."""
        return unpack_int4(self.stored) if self.bits == 4 else self.stored

    def dequantize(self, dtype: torch.dtype = torch.float16) -> torch.Tensor:
        """``half(q) * scale`` per element (the reference's extraction), cast to ``dtype``."""
        return dequantize(self.stored, self.scale, self.bits, dtype)

    def to(self, device: torch.device | str) -> QuantizedWeight:
        return QuantizedWeight(self.stored.to(device), self.scale.to(device), self.bits)
