"""Multiple-choice encoding and scoring as the reference's ``build_multiple_choice_sample`` / ``cond_log_prob``
(docs/evaluation.md#task-encodings).

One forward scores every choice of an example: the context (text plus its mask token) is followed by one block per
choice, ``[sop] + choice[:-1]``, each causal within itself, blind to the other choices, and seeing the whole context.
A choice's score is the sum of its tokens' log-probabilities (no length normalization); the prediction is the first
choice with the highest score. When every choice is one token, one ``[sop]`` block serves them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from glm_engine.errors import TaskError
from glm_engine.evaluation.batching import RESERVED_TOKENS, Forward, Sample, collate, micro_batches
from glm_engine.model.glm130b.vocab import VocabLayout


@dataclass(frozen=True)
class ChoiceSample:
    """The encoded example, and for each choice the rows whose predictions score it and the tokens they predict."""

    sample: Sample
    targets: list[tuple[list[int], list[int]]]


def text_room(choices: Sequence[Sequence[int]], max_length: int) -> int:
    """How many text tokens an example with ``choices`` keeps within ``max_length``: ``max_length`` minus the choice
    tokens (1 when every choice is one token) minus the mask and sop; a TaskError when that leaves none."""
    if not choices or any(len(c) == 0 for c in choices):
        raise TaskError("every multiple-choice example needs at least one choice and no empty choice")
    target_length = 1 if all(len(c) == 1 for c in choices) else sum(len(c) for c in choices)
    keep = max_length - target_length - RESERVED_TOKENS
    if keep < 1:
        raise TaskError(
            f"the choices take {target_length} tokens, which leaves no room for the text in max_seq_length "
            f"{max_length} (the task's, at most the model's)"
        )
    return keep


def encode_multiple_choice(
    text: Sequence[int],
    choices: Sequence[Sequence[int]],
    layout: VocabLayout,
    use_task_mask: bool,
    unidirectional: bool,
    max_length: int,
) -> ChoiceSample:
    """Encode one example; ``max_length`` is the task's ``max_seq_length`` (at most the model's).

    The text keeps its last ``max_length - target_length - 2`` tokens when too long, where ``target_length`` is the
    sum of the choice lengths (1 when every choice is one token). The mask (``[gMASK]`` with ``use_task_mask``,
    else ``[MASK]``) is appended unless the text has one. Choice positions are the mask's position with ``[MASK]``;
    with ``[gMASK]`` they continue after the context, restarting for each choice. ``unidirectional`` makes the
    context causal (choices still see all of it).
    """
    mask_id = layout.gmask if use_task_mask else layout.mask
    single_token = all(len(c) == 1 for c in choices)
    text = list(text)[-text_room(choices, max_length) :]
    context = text if mask_id in text else [*text, mask_id]
    mask_position = context.index(mask_id)
    division = len(context)
    blocks = [[layout.sop]] if single_token else [[layout.sop, *choice[:-1]] for choice in choices]

    ids, positions = list(context), list(range(division))
    spans = []
    for block in blocks:
        start = len(ids)
        ids.extend(block)
        positions.extend(range(division, division + len(block)) if use_task_mask else [mask_position] * len(block))
        spans.append((start, len(ids)))
    total = len(ids)
    allowed = torch.zeros(total, total, dtype=torch.bool)
    allowed[:, :division] = True
    if unidirectional:
        allowed[:division, :division] = torch.ones(division, division, dtype=torch.bool).tril()
    for start, end in spans:
        allowed[start:end, start:end] = torch.ones(end - start, end - start, dtype=torch.bool).tril()

    if single_token:
        targets = [([division], [choice[0]]) for choice in choices]
    else:
        targets = [(list(range(start, end)), list(choice)) for (start, end), choice in zip(spans, choices)]
    return ChoiceSample(Sample(ids, positions, allowed), targets)


@torch.inference_mode()
def score_choices(
    forward: Forward,
    samples: Sequence[ChoiceSample],
    pad_id: int,
    micro_batch_size: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Per example, each choice's summed log-probability: an fp32 log-softmax over the whole vocabulary, summed in
    float64 (the reference stays in fp16; a 2-token choice's sum can round differently there).

    Only the rows that predict a choice token go through the log-softmax, so the memory is that of the logits.
    ``progress(n)`` is called with the number of examples each micro-batch finished.
    """
    scores: list[list[float]] = []
    for batch in micro_batches(samples, micro_batch_size):
        logits = forward(*collate([s.sample for s in batch], pad_id))
        for row, sample in enumerate(batch):
            scores.append(_choice_scores(logits[row], sample.targets))
        if progress is not None:
            progress(len(batch))
    return scores


def _choice_scores(logits: torch.Tensor, targets: list[tuple[list[int], list[int]]]) -> list[float]:
    rows = sorted({r for positions, _ in targets for r in positions})
    log_probs = torch.log_softmax(logits[rows].float(), dim=-1).cpu()
    index = {r: i for i, r in enumerate(rows)}
    return [
        sum(float(log_probs[index[r], token]) for r, token in zip(positions, tokens)) for positions, tokens in targets
    ]


def predict(scores: Sequence[float]) -> int:
    """The first index of the highest score (the reference's argmax; ``max`` keeps the first of equal ones)."""
    return max(range(len(scores)), key=scores.__getitem__)
