"""Console rendering of answers as the reference's generate.py shows them: each blank underlined, [MASK] blanks
also green, and for English text spaces around each blank (in the rendering only). The markup is for a terminal
only: piped or redirected output gets the plain answer (docs/cli.md)."""

from __future__ import annotations

import os
from typing import TextIO

from glm_engine.generation.blank_filling import Completion
from glm_engine.tokenizer import GLMTokenizer

UNDERLINE, GREEN, RESET = "\033[4m", "\x1b[0;32m", "\033[0m"


def wants_colour(stream: TextIO) -> bool:
    """Terminal markup on ``stream``: only a terminal gets it; ``NO_COLOR`` turns it off and ``FORCE_COLOR`` on,
    as the common conventions (no-color.org, force-color.org) say."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def styled_answer(completion: Completion, beam: int, tokenizer: GLMTokenizer, colour: bool = True) -> str:
    """The text of ``beam`` with its generated spans marked up for a terminal, or the plain answer without
    ``colour``."""
    if not colour:
        return completion.answers[beam]
    ids = completion.token_ids[beam]
    space = " " if completion.prompt.isascii() else ""
    opening, closing = (UNDERLINE, RESET) if completion.gmask else (GREEN + UNDERLINE, RESET + RESET)
    out, last = [], 0
    for start, end in completion.blank_spans[beam]:
        out.append(tokenizer.decode(ids[last:start]))
        out.append(space + opening + tokenizer.decode(ids[start:end]) + closing + space)
        last = end
    out.append(tokenizer.decode(ids[last:]))
    return "".join(out)
