"""What a test feeds the model: token ids, positions and masks for one whole sequence, sliced per forward.

The sequence is a prompt of ``context`` tokens followed by generated ones, laid out by the models' own generation
rules (``Family.continuation_inputs``: the prompt attends to itself bidirectionally, later tokens causally; GLM-130B
runs its 1-D positions on as a ``[gMASK]`` continuation, ChatGLM holds the blank's index from ``<sop>`` on and counts
generated tokens in its block row). Ids are random text ids
from a seeded generator: speed does not depend on which tokens run, and sampling is left out of the timing, as
llama-bench does. The transformers baseline builds the same tensors from the same seed, so both run identical inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from glm_engine.model.family import Family

# Ids are drawn below this bound (and below the vocabulary's special ids): plain text pieces in every tokenizer here.
MAX_TEXT_ID = 20000


@dataclass
class Workload:
    """One sequence of ``batch`` rows: ``ids [b, T]``, ``positions [b, T]`` or ``[b, 2, T]``, ``blocked [1, 1, T, T]``
    (True = may not attend)."""

    ids: torch.Tensor
    positions: torch.Tensor
    blocked: torch.Tensor
    context: int

    def part(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs of the forward over positions ``[start, stop)`` with ``start`` tokens already cached."""
        return self.ids[:, start:stop], self.positions[..., start:stop], self.blocked[..., start:stop, :stop]

    def to(self, device: torch.device) -> Workload:
        return Workload(self.ids.to(device), self.positions.to(device), self.blocked.to(device), self.context)


def build_workload(
    family: Family, config: Any, batch: int, context: int, total: int, text_ids: int, seed: int
) -> Workload:
    """Ids, positions and mask for ``batch`` rows of a ``context``-token prompt and ``total - context`` generated
    tokens, laid out by the family (``Family.continuation_inputs``); ids are drawn from ``[0, text_ids)``."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, max(1, min(text_ids, MAX_TEXT_ID)), (batch, total), generator=generator)
    positions, blocked = family.continuation_inputs(config, batch, context, total)
    return Workload(ids, positions, blocked, context)
