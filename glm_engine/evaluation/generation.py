"""Generation-task encoding and decoding as the reference's ``build_generation_sample`` / ``generate_text``
(docs/evaluation.md#task-encodings), on glm-engine's decode loop and strategies.

* The text keeps its last ``max_length - max_gen_length - 2`` tokens.
* Blank filling (the text holds the task's mask token): ``text + [sop]``; the answer fills that blank.
* Otherwise ``text + [mask, sop]`` (bidirectional), or ``[mask, sop] + text`` with a causal mask throughout
  (``unidirectional``, which needs ``[gMASK]``).
* Positions continue with ``[gMASK]``; with ``[MASK]`` ``sop`` and every generated token take the mask's position.
* Greedy decoding for BaseStrategy (the reference's top_k=1: on an exact tie we take the first id, where the reference
  samples among the tied ids), or deterministic beam search with the task's beam settings; the answer is beam 0 with
  a trailing end token dropped.
* Beam search counts the context as the reference's collate pads it: the micro-batch's longest context rounded up to
  a multiple of 32, in the length penalty ``((5 + length) / 6) ** length_penalty`` and the stop test. That padding
  can change which ended beam is best, so beam answers depend on the micro-batch as the reference's do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from glm_engine.backends.base import ModelRunner
from glm_engine.errors import TaskError
from glm_engine.evaluation.batching import REFERENCE_TILE, RESERVED_TOKENS, micro_batches
from glm_engine.evaluation.config import TaskConfig
from glm_engine.generation.decode import Strategy, decode_aligned
from glm_engine.generation.masks import AlignedBatch, GenerationRow, align_left
from glm_engine.generation.strategies import BeamSearchStrategy, GreedyStrategy
from glm_engine.model.glm130b.vocab import VocabLayout


def truncate_generation_text(
    text: Sequence[int],
    layout: VocabLayout,
    use_task_mask: bool,
    unidirectional: bool,
    max_gen_length: int,
    max_length: int,
) -> list[int]:
    """The text's last ``max_length - max_gen_length - 2`` tokens; a TaskError when that is none, or when a
    ``unidirectional`` task's text has a blank to fill."""
    keep = max_length - max_gen_length - RESERVED_TOKENS
    if keep < 1:
        raise TaskError(
            f"max_gen_length {max_gen_length} leaves no room for the text in max_seq_length {max_length} "
            "(the task's, at most the model's)"
        )
    text = list(text)[-keep:]
    if unidirectional and (layout.gmask if use_task_mask else layout.mask) in text:
        raise TaskError("a unidirectional task continues its text; this text has a blank to fill")
    return text


def encode_generation(
    text: Sequence[int],
    layout: VocabLayout,
    use_task_mask: bool,
    unidirectional: bool,
    max_gen_length: int,
    max_length: int,
) -> GenerationRow:
    """Encode one example's text for generating up to ``max_gen_length`` tokens within ``max_length``."""
    text = truncate_generation_text(text, layout, use_task_mask, unidirectional, max_gen_length, max_length)
    mask_id = layout.gmask if use_task_mask else layout.mask
    if mask_id in text:
        return GenerationRow([*text, layout.sop], text.index(mask_id), use_task_mask)
    if unidirectional:
        return GenerationRow([mask_id, layout.sop, *text], 0, True, causal=True)
    return GenerationRow([*text, mask_id, layout.sop], len(text), use_task_mask)


def beam_options(config: TaskConfig, layout: VocabLayout, invalid: Sequence[slice | int] = ()) -> dict[str, Any]:
    """:class:`BeamSearchStrategy` arguments for a task: its beam settings, deterministic, contexts counted padded
    to the reference's tile."""
    return dict(
        num_beams=config.num_beams,
        length_penalty=config.length_penalty,
        consider_end=True,
        end_tokens=layout.end_tokens,
        invalid_slices=tuple(invalid),
        no_repeat_ngram_size=config.no_repeat_ngram_size,
        min_gen_length=config.min_gen_length,
        deterministic=True,
        context_tile=REFERENCE_TILE,
    )


def build_strategy(config: TaskConfig, layout: VocabLayout, invalid: Sequence[slice | int] = ()) -> Strategy:
    """The reference's evaluation strategies: greedy, or beam search with ``deterministic=True``."""
    if config.sampling_strategy == "BeamSearchStrategy":
        return BeamSearchStrategy(**beam_options(config, layout, invalid))
    return GreedyStrategy(end_tokens=layout.end_tokens, invalid_slices=invalid)


@torch.inference_mode()
def generate(
    runner: ModelRunner,
    prompts: Sequence[GenerationRow],
    max_gen_length: int,
    new_strategy: Callable[[], Strategy],
    pad_id: int,
    micro_batch_size: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[list[list[int]]]:
    """Per prompt, the strategy's beams (best first, generated tokens, end tokens included), ``micro_batch_size``
    prompts per decode loop (left-aligned; each row computes what it would alone)."""
    results: list[list[list[int]]] = []
    for batch in micro_batches(prompts, micro_batch_size):
        budgets = [max_gen_length] * len(batch)
        aligned = align_prompts(batch, max_gen_length, pad_id)
        contexts = [p.context for p in batch]
        results.extend(decode_aligned(runner, aligned, contexts, budgets, new_strategy(), pad_id))
        if progress is not None:
            progress(len(batch))
    return results


def align_prompts(prompts: Sequence[GenerationRow], max_gen_length: int, pad_id: int) -> AlignedBatch:
    """The generation batch of ``prompts``, left-aligned with room for ``max_gen_length`` tokens each."""
    total = max(len(p.context) for p in prompts) + max_gen_length
    return align_left(prompts, total, pad_id, [max_gen_length] * len(prompts))


def answer_tokens(beam: Sequence[int], end_tokens: Sequence[int]) -> list[int]:
    """A beam's tokens without a trailing end token."""
    beam = list(beam)
    return beam[:-1] if beam and beam[-1] in end_tokens else beam
