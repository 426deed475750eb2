"""Lines typed at an interactive prompt: a line that is not valid UTF-8 is reported and skipped, never a traceback
(``run`` and ``chat`` read their queries through it)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

from glm_engine.tokenizer.text_input import is_valid_text

INVALID_LINE = "error: that line is not valid UTF-8 text; type it again"


def _keep_bad_bytes() -> None:
    """Decode standard input with ``surrogateescape``, so a bad byte reaches us as a lone surrogate."""
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="surrogateescape")


def typed_lines(prompt: str) -> Iterator[str]:
    """Stripped lines typed at ``prompt`` until end of input; invalid ones are reported on stderr and skipped."""
    _keep_bad_bytes()
    while True:
        try:
            line = input(prompt)
        except EOFError:
            return
        if not is_valid_text(line):
            print(INVALID_LINE, file=sys.stderr, flush=True)
            continue
        yield line.strip()
