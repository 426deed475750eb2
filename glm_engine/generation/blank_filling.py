"""Fill the blanks of text prompts, left to right, as the reference's ``fill_blanks`` does
(docs/glm-semantics.md#blank-filling).

A prompt with ``[MASK]`` fills every ``[MASK]``; else every ``[sMASK]``; else ``[gMASK]`` is appended and the model
continues the text. ``eos`` is appended when the text does not end with a mask. Each blank is generated with the
prompt so far (earlier blanks filled by the best beam). Prompts of a batch advance together, one blank per round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from glm_engine.backends.base import ModelRunner
from glm_engine.errors import InputError
from glm_engine.generation.decode import TokenCallback, decode
from glm_engine.generation.masks import GenerationRow
from glm_engine.generation.options import GenerationOptions
from glm_engine.tokenizer import GLMTokenizer


@dataclass
class PromptPlan:
    """A prompt turned into tokens, with the blank kind to fill."""

    text: str  # as shown to the user: ``" [gMASK]"`` appended when the model continues the text
    tokens: list[int]
    mask_id: int
    gmask: bool


def plan_prompt(text: str, tokenizer: GLMTokenizer, max_sequence_length: int) -> PromptPlan:
    """Tokenize per segment around masks, append ``[gMASK]``/``eos`` per the reference's rules, check the length."""
    layout = tokenizer.layout
    if not text.strip():
        raise InputError("the prompt is empty")
    tokens = tokenizer.tokenize_prompt(text)
    if "[MASK]" in text:
        mask_name = "[MASK]"
    elif "[sMASK]" in text:
        mask_name = "[sMASK]"
    else:
        mask_name = "[gMASK]"
    gmask = mask_name == "[gMASK]"
    if "MASK]" not in text:
        tokens.append(layout.gmask)
        text += " [gMASK]"
    if not text.endswith("MASK]"):
        tokens.append(layout.eos)
    if len(tokens) > max_sequence_length:
        raise InputError(f"text too long: {len(tokens)} tokens, the model takes at most {max_sequence_length}")
    return PromptPlan(text, tokens, layout.mask_ids[mask_name], gmask)


@dataclass
class Completion:
    """The filled text of one prompt: every beam, best first."""

    prompt: str  # as the reference shows it (`` [gMASK]`` appended when the model continues the text)
    answers: list[str]  # plain text with the blanks filled, one per beam
    blanks: list[list[str]]  # per beam, the text of each blank
    token_ids: list[list[int]] = field(repr=False)  # per beam, the filled token sequence (no trailing eos)
    blank_spans: list[list[tuple[int, int]]] = field(repr=False)  # per beam, [start, end) of each blank in token_ids
    gmask: bool = False  # the blanks continue the text ([gMASK]) rather than fill [MASK]/[sMASK]


@dataclass
class _Fill:
    position: int  # where the blank starts in the filled sequence
    tokens: list[int]


def _strip_eos(seq: list[int], eos: int) -> list[int]:
    return seq[:-1] if seq and seq[-1] == eos else seq


def fill_blanks(
    runner: ModelRunner,
    tokenizer: GLMTokenizer,
    prompts: list[str],
    options: GenerationOptions,
    on_token: TokenCallback | None = None,
    banned: tuple[slice, ...] = (),
    generator: torch.Generator | None = None,
) -> list[Completion]:
    """Fill every blank of every prompt; one :class:`Completion` per prompt, in order.

    ``banned`` are id ranges never generated (the reference bans none; the built-in random model bans ids its
    tokenizer cannot decode). Sampling draws from ``generator`` (default: a new one seeded with ``options.seed``),
    one stream for all blanks, so the second blank does not replay the first one's draws.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(options.seed)
    config, layout = runner.config, tokenizer.layout
    banned_ids = sum(len(range(config.vocab_size)[s]) if isinstance(s, slice) else 1 for s in banned)
    options.check_fits(config.max_sequence_length, config.vocab_size, len(layout.end_tokens), banned_ids)
    plans = [plan_prompt(p, tokenizer, config.max_sequence_length) for p in prompts]
    best = [list(p.tokens) for p in plans]  # each prompt's sequence, earlier blanks filled by its best beam
    fills: list[list[_Fill]] = [[] for _ in plans]
    finals: list[list[tuple[list[int], _Fill]]] = [[] for _ in plans]  # last round: per beam (sequence, its fill)
    end_tokens = layout.end_tokens
    while True:
        active = [i for i, p in enumerate(plans) if p.mask_id in best[i]]
        if not active:
            break
        rows, budgets = [], []
        for i in active:
            context = best[i] + [layout.sop]
            budget = options.out_seq_length - len(context)
            if budget < 0:  # at 0 the reference leaves the blank empty; below, its padding call would truncate
                raise InputError(
                    f"the prompt needs {len(context)} tokens with its blanks filled so far; "
                    f"out_seq_length {options.out_seq_length} (which counts the prompt) is shorter"
                )
            rows.append(GenerationRow(context, best[i].index(plans[i].mask_id), plans[i].gmask))
            budgets.append(budget)
        strategy = options.build_strategy(end_tokens, banned, generator)
        results = decode(runner, rows, budgets, strategy, layout.pad, on_token)
        for i, beams, row in zip(active, results, rows):
            seq, at = best[i], row.mask_position
            candidates = []
            for beam in beams:
                blank = beam[:-1] if beam and beam[-1] in end_tokens else beam
                candidates.append((seq[:at] + blank + seq[at + 1 :], _Fill(at, blank)))
            finals[i] = candidates
            best[i] = candidates[0][0]
            fills[i].append(candidates[0][1])

    completions = []
    for i, plan in enumerate(plans):
        answers, blanks, ids, spans = [], [], [], []
        for seq, fill in finals[i]:
            beam_fills = [*fills[i][:-1], fill]
            seq = _strip_eos(seq, layout.eos)
            ids.append(seq)
            answers.append(tokenizer.decode(seq))
            blanks.append([tokenizer.decode(f.tokens) for f in beam_fills])
            spans.append([(f.position, f.position + len(f.tokens)) for f in beam_fills])
        completions.append(Completion(plan.text, answers, blanks, ids, spans, plan.gmask))
    return completions
