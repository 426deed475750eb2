"""Console rendering of answers as the reference's generate.py shows them: each blank underlined, [MASK] blanks
also green, and for English text spaces around each blank (in the rendering only)."""

from __future__ import annotations

from glm_engine.generation.blank_filling import Completion
from glm_engine.tokenizer import GLMTokenizer

UNDERLINE, GREEN, RESET = "\033[4m", "\x1b[0;32m", "\033[0m"


def styled_answer(completion: Completion, beam: int, tokenizer: GLMTokenizer) -> str:
    """The text of ``beam`` with its generated spans marked up for a terminal."""
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
