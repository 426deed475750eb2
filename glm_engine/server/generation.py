"""One generation of one request through the :class:`AsyncEngine`: tokens as they come, the client watched, the
request cancelled when the client goes, latencies recorded."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from glm_engine.model.family import ServingPrompt
from glm_engine.server.async_engine import AsyncEngine, EngineFailure
from glm_engine.server.metrics import ServerMetrics
from glm_engine.serving.core import NON_FINITE
from glm_engine.serving.sampling import SamplingParams, TokenChoice

DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


class ClientGone(Exception):
    """The client closed the connection; its request was cancelled."""


class EngineError(Exception):
    """The engine failed while running the request (HTTP 500)."""


@dataclass
class ServedModel:
    """What the handlers need of the loaded model."""

    name: str
    family: Any
    config: Any
    tokenizer: Any
    banned: tuple[slice, ...]
    engine: AsyncEngine
    metrics: ServerMetrics
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def max_positions(self) -> int:
        return int(self.config.max_sequence_length)

    @property
    def kv_capacity(self) -> int:
        """Tokens the whole KV cache holds: no one sequence can be longer."""
        pool = self.engine.core.pool
        return pool.num_blocks * pool.block_size


@dataclass
class Generation:
    """The generated ids of one choice, their sampling details and why it ended."""

    tokens: list[int] = field(default_factory=list)
    choices: list[TokenChoice] = field(default_factory=list)
    finish_reason: str = "length"


async def generate(
    served: ServedModel,
    prompt: ServingPrompt,
    params: SamplingParams,
    request: Request,
    on_token: Callable[[Generation], Awaitable[None]] | None = None,
) -> Generation:
    """Run ``prompt`` to its end; ``on_token`` sees the generation after every token (streaming)."""
    request_id = uuid.uuid4().hex
    start = last = time.perf_counter()
    outputs = served.engine.submit(request_id, prompt.ids, params, prompt.end_token_ids, served.banned)
    out = Generation()
    finished = False
    checked = start
    try:
        while True:
            try:
                item = outputs.get_nowait()  # a token already waiting: no timer task per token
            except asyncio.QueueEmpty:
                try:
                    item = await asyncio.wait_for(outputs.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:  # (TimeoutError itself from Python 3.11)
                    item = None
            if time.perf_counter() - checked >= DISCONNECT_POLL_S:  # tokens may come faster than the poll
                checked = time.perf_counter()
                if await request.is_disconnected():
                    raise ClientGone
            if item is None:
                continue
            if isinstance(item, EngineFailure):
                finished = True
                raise EngineError(item.message)
            if item.choice is not None:
                now = time.perf_counter()
                if out.tokens:
                    served.metrics.itl.observe(now - last)
                else:
                    served.metrics.ttft.observe(now - start)
                last = now
                out.tokens.append(item.choice.token)
                out.choices.append(item.choice)
                served.metrics.generation_tokens.inc()
                if on_token is not None:
                    await on_token(out)
            if item.finished:
                finished = True
                if item.finish_reason == NON_FINITE:
                    raise EngineError("the model produced NaN or infinite logits for this request; no text is made")
                out.finish_reason = item.finish_reason or "stop"
                return out
    finally:
        if not finished:
            served.engine.cancel(request_id)


async def run_all(coroutines: list[Awaitable[Any]]) -> list[Any]:
    """Await every coroutine (the choices of one request); the first error cancels the others and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string (and whether one was found)."""
    found = [text.index(s) for s in stops if s in text]
    return (text[: min(found)], True) if found else (text, False)


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters a stream keeps back: the longest tail that could start a stop string, and a
    trailing replacement character (half of a multi-byte character)."""
    keep = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if stop.startswith(text[-size:]):
                keep = max(keep, size)
                break
    if text.endswith("\ufffd"):
        keep = max(keep, 1)
    return keep
