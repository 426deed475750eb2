"""Turn the errors a user can cause into one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from glm_engine.errors import GlmEngineError

USER_ERROR_EXIT_CODE = 1


@contextmanager
def user_errors() -> Iterator[None]:
    """Print ``error: <message>`` for GlmEngineError and operating-system errors (paths, permissions, disk), exit 1."""
    try:
        yield
    except (GlmEngineError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(USER_ERROR_EXIT_CODE) from None
