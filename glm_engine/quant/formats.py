"""Names of the weight formats a backend may run, so ``supports()`` answers about one shared vocabulary.

``rowwise``: the reference's per-output-row symmetric scale (docs/glm-semantics.md#weight-only-quantization-formula);
``groupwise``: a symmetric scale per block of input columns.
"""

from __future__ import annotations

from enum import Enum

from glm_engine.errors import InputError


class QuantFormat(str, Enum):
    INT8_ROWWISE = "int8-rowwise"
    INT4_ROWWISE = "int4-rowwise"
    INT8_GROUPWISE = "int8-groupwise"
    INT4_GROUPWISE = "int4-groupwise"


def parse_quant_format(name: str | QuantFormat) -> QuantFormat:
    """The format called ``name``, or an InputError listing the known ones."""
    try:
        return QuantFormat(name)
    except ValueError:
        known = ", ".join(f.value for f in QuantFormat)
        raise InputError(f"unknown quantization format {name!r}; known formats: {known}") from None
