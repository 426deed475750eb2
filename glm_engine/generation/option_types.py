"""Check an options dataclass's values against its annotated types before anything compares them, so a caller who
passes ``seed="x"`` or ``out_seq_length=2.5`` gets an ``InputError`` naming the option, not a TypeError later."""

from __future__ import annotations

import numbers
from dataclasses import fields
from typing import Any

from glm_engine.errors import InputError

# Annotation text -> (accepted types, what to call them). bool is an int to Python: refused where a number is meant.
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((numbers.Integral,), "an integer"),
    "float": ((numbers.Real,), "a number"),
    "bool": ((bool,), "true or false"),
    "str": ((str,), "a string"),
}


def check_option_types(options: Any) -> None:
    """An InputError for the first field whose value is not of its annotated type (``X | None`` allows None)."""
    for field in fields(options):
        annotation = str(field.type).replace(" ", "")
        optional = annotation.endswith("|None")
        kind = _KINDS.get(annotation.removesuffix("|None"))
        value = getattr(options, field.name)
        if kind is None or (optional and value is None):
            continue
        types, words = kind
        wrong_bool = isinstance(value, bool) and bool not in types
        if wrong_bool or not isinstance(value, types):
            raise InputError(f"{field.name} must be {words}, got {value!r}")


# torch.Generator.manual_seed takes any 64-bit seed, signed or not; a larger one is an OverflowError deep in torch.
SEED_RANGE = (-(2**63), 2**64 - 1)


def check_seed(seed: int, name: str = "seed") -> None:
    """An InputError when ``seed`` does not fit a random generator's 64 bits."""
    low, high = SEED_RANGE
    if not low <= seed <= high:
        raise InputError(f"{name} must fit in 64 bits (-2**63 to 2**64 - 1), got {seed}")
