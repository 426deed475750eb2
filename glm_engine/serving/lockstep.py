"""Tensor-parallel serving in lockstep: every rank holds the same :class:`EngineCore` and applies the same events in
the same order, so every rank schedules the same pieces, runs the same collective forward and samples the same token
from the same gathered logits. Rank 0 owns the requests: before each step it broadcasts what arrived (requests, with
their seeds fixed, and cancellations); the other ranks follow (docs/serving.md#tensor-parallel-serving)."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, replace
from typing import Any

from glm_engine.errors import InputError
from glm_engine.serving.core import EngineCore
from glm_engine.serving.sampling import SEED_RANGE, SamplingParams

STOP = "stop"


@dataclass(frozen=True)
class AddEvent:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    end_token_ids: tuple[int, ...]
    banned: tuple[slice, ...]


@dataclass(frozen=True)
class AbortEvent:
    request_id: str


@dataclass(frozen=True)
class JobEvent:
    """A request the batch does not run (GLM-130B's beam search): ``Engine.generate`` between two steps."""

    request_id: str
    prompt: str
    options: dict[str, Any]


@dataclass(frozen=True)
class JobResult:
    """Each beam's text, best first, and the tokens each generated."""

    texts: list[str]
    generated: list[int]


Event = AddEvent | AbortEvent | JobEvent


def run_job(engine: Any, event: JobEvent) -> JobResult:
    """Run a job on ``engine``: the continuation after ``[gMASK]``, else the text with its blanks filled, per beam."""
    (completion,) = engine.generate(event.prompt, **event.options)
    texts = [blanks[-1] for blanks in completion.blanks] if completion.gmask else list(completion.answers)
    generated = [sum(end - start for start, end in spans) for spans in completion.blank_spans]
    return JobResult(texts, generated)


def with_seed(params: SamplingParams) -> SamplingParams:
    """``params`` with a seed drawn here when it has none, so every rank samples from the same stream."""
    if params.seed is not None:
        return params
    return replace(params, seed=random.randrange(0, SEED_RANGE[1] // 2))


def apply(core: EngineCore, event: Event) -> str | None:
    """Apply one event to ``core``; the refusal's message when an added request is refused."""
    if isinstance(event, AbortEvent):
        core.abort(event.request_id)
        return None
    try:
        core.add_request(event.request_id, event.prompt, event.params, event.end_token_ids, event.banned)
    except InputError as exc:
        return str(exc)
    return None


def follow(core: EngineCore, comm: Any, engine: Any) -> None:
    """A follower rank: apply rank 0's events (running its jobs on ``engine`` too) and step with it until it
    broadcasts the stop."""
    while True:
        events = comm.broadcast_object(None)
        if events == STOP:
            return
        for event in events:
            if isinstance(event, JobEvent):
                with contextlib.suppress(InputError):  # rank 0 reports it
                    run_job(engine, event)
            else:
                apply(core, event)
        if core.has_work:
            core.step()
