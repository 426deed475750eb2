"""``EngineCore``: requests in, one token per running sequence per step out (continuous batching, docs/serving.md).

Each :meth:`EngineCore.step` asks the scheduler for the pieces to compute, packs their tokens into one row, runs the
graph once over a :class:`~glm_engine.serving.step_cache.PagedStepCache`, and samples a token for every sequence
whose piece reached its last token. Sequences finish at an end token, a stop token, a stop string, ``max_tokens`` or
the model's positions, and their blocks are freed in the same step.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from glm_engine.errors import InputError
from glm_engine.serving.kv_blocks import BlockPool
from glm_engine.serving.row_tiled import DEFAULT_TILE_ROWS, RowTiledOps
from glm_engine.serving.sampling import SamplingParams, TokenChoice, choose_token, new_generator
from glm_engine.serving.scheduler import Piece, Scheduler, SchedulerLimits
from glm_engine.serving.sequence import Sequence, Status
from glm_engine.serving.step_cache import PagedStepCache, Segment

DEFAULT_BLOCK_SIZE = 16
NON_FINITE = "error"  # the finish reason of a sequence whose logits held NaN or infinity
STOP_WINDOW_SLACK = 8  # tokens decoded beyond a stop string's length when looking for it (tokens of no text)


@dataclass(frozen=True)
class StepOutput:
    """What one step did for one request: its new token (None when only a prefill chunk ran) and whether it ended."""

    request_id: str
    choice: TokenChoice | None
    finished: bool
    finish_reason: str | None = None


@dataclass(frozen=True)
class CoreStats:
    """The gauges a server reports: queue, batch and KV blocks."""

    waiting: int
    running: int
    blocks_used: int
    blocks_free: int
    block_size: int
    preemptions: int


class EngineCore:
    """Continuous batching over a paged KV cache for one loaded model (``runner``: a graph ``DecoderModel``). Under
    tensor parallelism every rank holds one and feeds it the same requests in the same order (``lockstep.py``)."""

    def __init__(
        self,
        runner: object,
        kv_cache_bytes: int,
        limits: SchedulerLimits | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        tile_rows: int = DEFAULT_TILE_ROWS,
        detokenize: Callable[[list[int]], str] | None = None,
    ) -> None:
        if not getattr(runner, "capabilities", None) or not runner.capabilities.op_level:
            raise InputError("the serving core runs op-level backends (cpu, cuda, rocm_dcu, ascend), not whole graphs")
        self.model = copy.copy(runner)  # the same weights, with batch-invariant products
        self.model.ops = RowTiledOps(runner.ops, tile_rows)
        self.family, self.config = runner.family, runner.config
        c = self.config
        kv_heads, dtype = runner.local_kv_heads, runner.dtype
        blocks = BlockPool.blocks_in_budget(kv_cache_bytes, c.num_layers, kv_heads, c.head_dim, block_size, dtype)
        self.pool = BlockPool(c.num_layers, kv_heads, c.head_dim, blocks, block_size, dtype, runner.device)
        self.scheduler = Scheduler(self.pool, limits or SchedulerLimits())
        self.detokenize = detokenize
        self._sequences: dict[str, Sequence] = {}
        self._arrivals = itertools.count()

    # --- requests -------------------------------------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt: Seq[int],
        params: SamplingParams,
        end_token_ids: Seq[int] = (),
        banned: tuple[slice, ...] = (),
    ) -> None:
        """Queue a prompt (token ids as the family's generation feeds them); refused when it cannot ever fit."""
        if request_id in self._sequences:
            raise InputError(f"request {request_id!r} is already running")
        self.check_request(prompt, params)
        sequence = Sequence(
            request_id=request_id,
            prompt=list(prompt),
            params=params,
            layout=self.family.sequence_layout(self.config, prompt),
            generator=new_generator(params.seed),
            end_token_ids=frozenset(() if params.ignore_eos else end_token_ids) | frozenset(params.stop_token_ids),
            arrival=next(self._arrivals),
            banned=banned,
        )
        self._sequences[request_id] = sequence
        self.scheduler.add(sequence)

    def check_request(self, prompt: Seq[int], params: SamplingParams) -> None:
        """Refuse a request that could never run here (reads only fixed sizes, so any thread may call it)."""
        if not prompt:
            raise InputError("the prompt is empty")
        limit = self.config.max_sequence_length
        if len(prompt) >= limit:
            raise InputError(f"the prompt has {len(prompt)} tokens; {self.family.title} takes at most {limit - 1}")
        longest = min(len(prompt) + params.max_tokens, limit)
        capacity = self.pool.num_blocks * self.pool.block_size
        if self.pool.blocks_for(longest) > self.pool.num_blocks:
            raise InputError(
                f"prompt ({len(prompt)} tokens) plus max_tokens ({params.max_tokens}) needs {longest} cached tokens; "
                f"the KV cache holds {capacity}: lower max_tokens or give the cache more memory"
            )

    def abort(self, request_id: str) -> bool:
        """Cancel a request and free its blocks now; False when it is not (or no longer) known."""
        sequence = self._sequences.pop(request_id, None)
        if sequence is None:
            return False
        self.scheduler.remove(sequence)
        sequence.status, sequence.finish_reason = Status.FINISHED, "abort"
        return True

    @property
    def has_work(self) -> bool:
        return bool(self.scheduler.running or self.scheduler.waiting)

    def stats(self) -> CoreStats:
        s = self.scheduler
        return CoreStats(
            len(s.waiting),
            len(s.running),
            self.pool.used_blocks,
            self.pool.free_blocks,
            self.pool.block_size,
            s.preemptions,
        )

    # --- one step -------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        """Run the next scheduled pieces; one output per sequence that got a token or ended."""
        pieces = self.scheduler.schedule()
        if not pieces:
            return []
        logits = self._forward(pieces)
        outputs = []
        for piece, row in zip(self._sampled(pieces), logits, strict=True):
            outputs.append(self._advance(piece.sequence, row))
        for piece in pieces:
            piece.sequence.computed = piece.end
        return outputs

    def _sampled(self, pieces: list[Piece]) -> list[Piece]:
        return [p for p in pieces if p.end == len(p.sequence.tokens)]

    def _forward(self, pieces: list[Piece]) -> torch.Tensor:
        """Logits ``[sampled pieces, vocab]`` of the packed step."""
        ids, positions, segments, columns = [], [], [], []
        offset = 0
        for piece in pieces:
            seq, n = piece.sequence, piece.end - piece.start
            ids.append(torch.tensor(seq.tokens[piece.start : piece.end], dtype=torch.long))
            positions.append(seq.layout.positions(piece.start, piece.end))
            mask = seq.layout.blocked(piece.start, piece.end)
            segments.append(
                Segment(
                    offset=offset,
                    new_slots=self.pool.slots(seq.blocks, piece.start, piece.end),
                    all_slots=self.pool.slots(seq.blocks, 0, piece.end),
                    blocked=mask.to(self.model.device)[None, None],
                    attends_all=not bool(mask.any()),
                )
            )
            if piece.end == len(seq.tokens):
                columns.append(offset + n - 1)
            offset += n
        device = self.model.device
        input_ids = torch.cat(ids).unsqueeze(0).to(device)
        position_ids = torch.cat(positions, dim=-1).unsqueeze(0).to(device)
        unused = torch.zeros(1, 1, 1, 1, dtype=torch.bool, device=device)
        cache = PagedStepCache(self.pool, segments)
        logits = self.model.forward(
            input_ids, position_ids, unused, cache, logit_columns=torch.tensor(columns, dtype=torch.long, device=device)
        )
        return logits[0].float().cpu()

    def _advance(self, sequence: Sequence, logits: torch.Tensor) -> StepOutput:
        """Sample ``sequence``'s next token from its logits and decide whether it ends; logits with NaN or infinity
        end the sequence with reason ``error`` (no text is made from them; the other sequences go on)."""
        if not bool(torch.isfinite(logits).all()):
            self._finish(sequence, NON_FINITE)
            return StepOutput(sequence.request_id, None, True, NON_FINITE)
        choice = choose_token(logits, sequence.params, sequence.generator, sequence.banned)
        sequence.tokens.append(choice.token)
        sequence.choices.append(choice)
        reason = self._finish_reason(sequence, choice.token)
        if reason is not None:
            self._finish(sequence, reason)
        return StepOutput(sequence.request_id, choice, reason is not None, reason)

    def _finish(self, sequence: Sequence, reason: str) -> None:
        self.scheduler.remove(sequence)
        self._sequences.pop(sequence.request_id, None)
        sequence.status, sequence.finish_reason = Status.FINISHED, reason

    def _finish_reason(self, sequence: Sequence, token: int) -> str | None:
        if token in sequence.end_token_ids:
            return "stop"
        if sequence.params.stop and self.detokenize is not None:
            window = max(len(stop) for stop in sequence.params.stop) + STOP_WINDOW_SLACK  # a stop ends in new tokens
            text = self.detokenize(sequence.generated[-window:])
            if any(stop in text for stop in sequence.params.stop):
                return "stop"
        if len(sequence.generated) >= sequence.params.max_tokens:
            return "length"
        if len(sequence.tokens) >= self.config.max_sequence_length:
            return "length"
        return None

    def sequence(self, request_id: str) -> Sequence | None:
        """The live sequence of ``request_id`` (None once finished or cancelled)."""
        return self._sequences.get(request_id)
