"""Checks of raw option values shared by the commands, made before anything loads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from glm_engine.errors import InputError


def refuse_empty(options: Mapping[str, str | Sequence[str] | None]) -> None:
    """An InputError for an option given as an empty string (``--checkpoint "$UNSET"``): as a path it would mean the
    current folder, and where the option has a default it would silently read as "not given"."""
    for flag, value in options.items():
        values = [value] if value is None or isinstance(value, str) else value
        if any(v is not None and not v.strip() for v in values):
            raise InputError(f"{flag} is empty; give a value or leave the option out")
