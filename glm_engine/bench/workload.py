"""What a test feeds the model: token ids, positions and masks for one whole sequence, sliced per forward.

The sequence is a prompt of ``context`` tokens followed by generated ones, laid out by the models' own generation
rules (``generation_blocked``: the prompt attends to itself bidirectionally, later tokens causally). GLM-130B-style
models take 1-D positions that run on (``[gMASK]`` continuation); ChatGLM takes 2-D positions, the position row
holding the blank's index from ``<sop>`` on and the block row counting generated tokens. Ids are random text ids
from a seeded generator: speed does not depend on which tokens run, and sampling is left out of the timing, as
llama-bench does. The transformers baseline builds the same tensors from the same seed, so both run identical inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from glm_engine.generation.masks import generation_blocked

# Ids are drawn below this bound (and below the vocabulary's special ids): plain text pieces in every tokenizer here.
MAX_TEXT_ID = 20000


class Family(str, Enum):
    GLM = "glm"  # GLM-130B architecture (the built-in demo model, SAT/native checkpoints, glm presets)
    CHATGLM = "chatglm"  # ChatGLM-6B architecture (Hugging Face folders, chatglm presets)


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


def build_workload(family: Family, batch: int, context: int, total: int, text_ids: int, seed: int) -> Workload:
    """Ids, positions and mask for ``batch`` rows of a ``context``-token prompt and ``total - context`` generated
    tokens; ids are drawn from ``[0, text_ids)``."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, max(1, min(text_ids, MAX_TEXT_ID)), (batch, total), generator=generator)
    blocked = generation_blocked(context, total)[None, None]
    if family is Family.GLM:
        positions = torch.arange(total).expand(batch, total).contiguous()
        return Workload(ids, positions, blocked, context)
    position = torch.arange(total)
    position[context:] = context - 1  # generated tokens keep the blank's position (the prompt ends at it)
    block = torch.zeros(total, dtype=torch.long)
    block[context - 1 :] = torch.arange(1, total - context + 2)  # <sop> is 1, then one more per token
    positions = torch.stack([position, block]).expand(batch, 2, total).contiguous()
    return Workload(ids, positions, blocked, context)
