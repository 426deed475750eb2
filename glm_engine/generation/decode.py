"""The incremental decoding loop: one prefill, then one cached step per token (reference ``batch_filling_sequence``).

Prompts of a batch are left-aligned so every row writes the same KV-cache column each step. Beams are rows of the
cache; after each beam step the cache is reordered in place, copying only the generated part of moved beams.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from glm_engine.backends.base import ModelRunner
from glm_engine.errors import NumericalError
from glm_engine.generation.masks import AlignedBatch, GenerationRow, align_left

# Called after every step with the step index, the new token of each row and beam ([batch][beam]; -1 = ended) and
# the beam each one continues ([batch][beam], an index into the previous step's beams; all 0 without beam search).
TokenCallback = Callable[[int, list[list[int]], list[list[int]]], None]


class Strategy(Protocol):
    num_beams: int

    @property
    def is_done(self) -> bool: ...

    def start(self, contexts: Sequence[Sequence[int]]) -> None: ...

    def finish(self, row: int) -> None: ...

    def step(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def finalize(self) -> list[list[list[int]]]: ...


@torch.inference_mode()
def decode(
    runner: ModelRunner,
    rows: Sequence[GenerationRow],
    budgets: Sequence[int],
    strategy: Strategy,
    pad_id: int,
    on_token: TokenCallback | None = None,
    cuda_graphs: bool | None = None,
) -> list[list[list[int]]]:
    """Generate up to ``budgets[i]`` tokens after each row's ``sop``; per row, beams best first (generated tokens)."""
    aligned = align_left(rows, max(len(r.context) for r in rows) + max(budgets), pad_id, budgets)
    return decode_aligned(runner, aligned, [r.context for r in rows], budgets, strategy, pad_id, on_token, cuda_graphs)


@torch.inference_mode()
def decode_aligned(
    runner: ModelRunner,
    aligned: AlignedBatch,
    contexts: Sequence[Sequence[int]],
    budgets: Sequence[int],
    strategy: Strategy,
    pad_id: int,
    on_token: TokenCallback | None = None,
    cuda_graphs: bool | None = None,
) -> list[list[list[int]]]:
    """The loop of :func:`decode` over a batch whose ids, positions and masks the caller built (a model variant with
    its own position scheme; ChatGLM's are ``[b, 2, total]``: the position axis is always the last).

    Cached steps run through the runner's decode stepper (``runner.decode_stepper``): device graphs where its
    backend replays them (CUDA graphs on the ``torch.cuda`` backends, see docs/backends.md) unless ``cuda_graphs``
    is False (None leaves it to the runner and the backend's defaults), plain ``forward`` calls elsewhere."""
    batch = len(contexts)
    most = max(budgets)
    start = aligned.context_length
    device = runner.device
    positions = aligned.position_ids.to(device)
    blocked = aligned.blocked.to(device)
    cache = runner.new_cache(batch, aligned.input_ids.shape[1])
    strategy.start(contexts)
    stepper = runner.decode_stepper(most - 1, cuda_graphs)

    logits = runner.forward(
        aligned.input_ids[:, :start].to(device),
        positions[..., :start],
        blocked[:, :, :start, :start],
        cache,
        last_only=True,
    )
    beams_so_far = 1
    for step in range(most):
        for row, budget in enumerate(budgets):
            if budget == step:
                strategy.finish(row)
        if strategy.is_done:
            break
        step_logits = logits.view(batch, beams_so_far, -1).float().cpu()
        guarded = getattr(strategy, "handles_invalid_scores", False)  # chat: the release's invalid-score guard
        if not guarded and not bool(torch.isfinite(step_logits).all()):
            raise NumericalError(f"the model produced NaN or infinite logits at step {step}: no text is made from them")
        tokens, parents = strategy.step(step_logits)
        if on_token is not None:
            on_token(step, tokens.tolist(), parents.tolist())
        if strategy.is_done or step == most - 1:
            break
        beams = tokens.shape[1]
        if beams != beams_so_far:
            cache = cache.expanded(beams)
            positions = positions.repeat_interleave(beams, 0)
            blocked = blocked.repeat_interleave(beams, 0)
        if beams > 1:  # sampling keeps every row in place: nothing to reorder
            flat_parents = (torch.arange(batch).unsqueeze(1) * beams + parents).flatten()
            cache.reorder(flat_parents, shared_prefix=start)
        beams_so_far = beams
        column = start + step
        feed = tokens.flatten()
        feed = torch.where(feed < 0, pad_id, feed).unsqueeze(1).to(device)  # ended rows (-1) compute on a pad
        logits = stepper.step(
            cache, feed, positions[..., column : column + 1], blocked[:, :, column : column + 1, : column + 1]
        )
    return strategy.finalize()
