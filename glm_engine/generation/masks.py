"""GLM's generation masks and position ids, and left-aligned batches of them
(docs/glm-semantics.md#masks-and-positions).

Everything before ``sop`` (the prompt, its mask token, a trailing ``eos``) attends bidirectionally to the whole
prompt; ``sop`` and generated tokens see the prompt plus, causally, ``sop..self``. With ``[MASK]``/``[sMASK]`` the
``sop`` and every generated token take the mask's position; with ``[gMASK]`` positions continue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def generation_blocked(context_length: int, total_length: int) -> torch.Tensor:
    """``[total, total]`` bool, True = blocked; ``context_length`` counts the prompt including ``sop``."""
    allowed = torch.ones(total_length, total_length, dtype=torch.bool).tril()
    allowed[:, : context_length - 1] = True
    return ~allowed


def generation_positions(context_length: int, total_length: int, mask_position: int, gmask: bool) -> torch.Tensor:
    """``[total]`` positions: ``0..`` then, unless ``gmask``, the mask's position from ``sop`` on."""
    positions = torch.arange(total_length, dtype=torch.long)
    if not gmask:
        positions[context_length - 1 :] = mask_position
    return positions


@dataclass(frozen=True)
class GenerationRow:
    """One prompt to continue: its tokens up to and including ``sop``, and where its blank is; ``causal``: the
    context attends causally too (the evaluation's unidirectional generation tasks), not bidirectionally."""

    context: list[int]
    mask_position: int
    gmask: bool
    causal: bool = False


@dataclass
class AlignedBatch:
    """Rows left-padded so that every prompt ends (at ``sop``) in the same column."""

    input_ids: torch.Tensor  # [b, total]; generated columns hold the pad id until filled
    position_ids: torch.Tensor  # [b, total]
    blocked: torch.Tensor  # [b, 1, total, total]
    context_length: int  # the common column count of the prompts (longest prompt)


def align_left(
    rows: Sequence[GenerationRow], total_length: int, pad_id: int, budgets: Sequence[int] | None = None
) -> AlignedBatch:
    """Left-pad ``rows`` to a common prompt length, with masks and positions out to ``total_length`` columns.

    Pad columns are blocked for every query; a pad row attends only to itself so no softmax row is empty. A row
    computed in a padded batch therefore sees exactly what it would see alone. Past a row's own budget of generated
    tokens (when ``budgets`` is given) its positions stay at the last one it can use: a finished row keeps being
    computed alongside longer ones and must not run past the model's position range.
    """
    context_length = max(len(r.context) for r in rows)
    batch = len(rows)
    input_ids = torch.full((batch, total_length), pad_id, dtype=torch.long)
    position_ids = torch.zeros(batch, total_length, dtype=torch.long)
    blocked = torch.ones(batch, 1, total_length, total_length, dtype=torch.bool)
    for i, row in enumerate(rows):
        pad = context_length - len(row.context)
        span = total_length - pad
        input_ids[i, pad:context_length] = torch.tensor(row.context, dtype=torch.long)
        positions = generation_positions(len(row.context), span, row.mask_position, row.gmask)
        if budgets is not None:
            last = len(row.context) + budgets[i] - 1
            positions[last + 1 :] = positions[last]
        position_ids[i, pad:] = positions
        blocked[i, 0, pad:, pad:] = generation_blocked(1 if row.causal else len(row.context), span)
        blocked[i, 0, torch.arange(pad), torch.arange(pad)] = False
    return AlignedBatch(input_ids, position_ids, blocked, context_length)


@dataclass(frozen=True)
class SequenceLayout:
    """One sequence's positions and mask, computed per token as the serving core needs them.

    The prompt's part is the family's own (``prompt_blocked`` may be bidirectional, as GLM-130B's and ChatGLM-6B's
    prefixes are); every generated token attends to all tokens before it and itself, and its position is
    ``first_generated + t * generated_step`` for the t-th generated token (a generation row that counts up by one, a
    block row that stays: the rule every GLM family's ``generation_batch`` follows)."""

    prompt_positions: torch.Tensor  # [(rows,) prompt]
    prompt_blocked: torch.Tensor  # [prompt, prompt] bool, True = blocked
    first_generated: torch.Tensor  # [(rows,)]
    generated_step: torch.Tensor  # [(rows,)]

    @property
    def prompt_length(self) -> int:
        return self.prompt_blocked.shape[0]

    @property
    def causal_prompt(self) -> bool:
        """Whether the prompt attends causally, so it can be prefilled in chunks."""
        n = self.prompt_length
        return bool(torch.equal(self.prompt_blocked, torch.ones(n, n, dtype=torch.bool).triu(1)))

    def positions(self, start: int, end: int) -> torch.Tensor:
        """Positions ``[(rows,) end - start]`` of tokens ``start..end-1`` (prompt, then generated)."""
        n = self.prompt_length
        prompt = self.prompt_positions[..., start : min(end, n)]
        steps = torch.arange(max(start, n) - n, max(end, n) - n, dtype=torch.long)
        generated = self.first_generated.unsqueeze(-1) + steps * self.generated_step.unsqueeze(-1)
        return torch.cat((prompt, generated), dim=-1)

    def blocked(self, start: int, end: int) -> torch.Tensor:
        """``[end - start, end]`` bool mask of tokens ``start..end-1`` over keys ``0..end-1``."""
        n = self.prompt_length
        out = torch.ones(end - start, end, dtype=torch.bool).triu(start + 1)
        prompt_rows = min(end, n) - start
        if prompt_rows > 0:
            out[:prompt_rows, : min(end, n)] = self.prompt_blocked[start : start + prompt_rows, : min(end, n)]
        return out


def layout_from_batch(batch: AlignedBatch) -> SequenceLayout:
    """The layout of a one-row :class:`AlignedBatch` that holds at least two generated columns."""
    context = batch.context_length
    positions = batch.position_ids[0]
    return SequenceLayout(
        prompt_positions=positions[..., :context].clone(),
        prompt_blocked=batch.blocked[0, 0, :context, :context].clone(),
        first_generated=positions[..., context].clone(),
        generated_step=positions[..., context + 1] - positions[..., context],
    )
