"""What to quantize to: a bit width and a scheme (rowwise, or groupwise with a block size), from CLI/API words."""

from __future__ import annotations

from dataclasses import dataclass

from glm_engine.errors import InputError
from glm_engine.quant.formats import QuantFormat
from glm_engine.quant.weight import GROUP_SIZES

QUANT_NAMES = {"int8": 8, "int4": 4}
SCHEMES = ("rowwise", "groupwise")
DEFAULT_GROUP_SIZE = 128


@dataclass(frozen=True)
class QuantSpec:
    """``bits`` 4 or 8; ``group_size`` None for the reference's rowwise scales, else input columns per scale."""

    bits: int
    group_size: int | None = None

    @classmethod
    def parse(cls, name: str | int, scheme: str = "rowwise", group_size: int | None = None) -> QuantSpec:
        """``int8``/``int4`` (or 8/4), ``rowwise``/``groupwise``, and a block size for groupwise (default 128)."""
        bits = QUANT_NAMES.get(str(name).lower()) or (int(name) if str(name) in ("4", "8") else None)
        if bits is None:
            raise InputError(f"unknown quantization {name!r}; choose int8 or int4")
        if scheme not in SCHEMES:
            raise InputError(f"unknown quantization scheme {scheme!r}; choose rowwise or groupwise")
        if scheme == "rowwise":
            if group_size is not None:
                raise InputError("a group size goes with the groupwise scheme, not rowwise")
            return cls(bits)
        size = group_size or DEFAULT_GROUP_SIZE
        if size not in GROUP_SIZES:
            raise InputError(f"group size must be one of {', '.join(map(str, GROUP_SIZES))}, got {size}")
        return cls(bits, size)

    @property
    def format(self) -> QuantFormat:
        if self.bits == 8:
            return QuantFormat.INT8_ROWWISE if self.group_size is None else QuantFormat.INT8_GROUPWISE
        return QuantFormat.INT4_ROWWISE if self.group_size is None else QuantFormat.INT4_GROUPWISE

    @classmethod
    def requested(
        cls, name: str | int | None, scheme: str = "rowwise", group_size: int | None = None
    ) -> QuantSpec | None:
        """What the user asked for, or None for no quantization; a scheme or group size without a bit width is
        refused instead of silently ignored."""
        if name is None:
            if scheme != "rowwise" or group_size is not None:
                raise InputError("a quantization scheme or group size must go with --quant int8|int4; add --quant")
            return None
        return cls.parse(name, scheme, group_size)

    def describe(self) -> str:
        scheme = "rowwise" if self.group_size is None else f"groupwise, {self.group_size} columns per scale"
        return f"INT{self.bits} {scheme}"
