"""Server-sent events: chunks as ``data: {json}`` lines, ending with ``data: [DONE]``; producers run as tasks that
are cancelled (and so cancel their requests) when the client goes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from glm_engine.server.generation import ClientGone, EngineError

DONE = "data: [DONE]\n\n"
_END = object()


def event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def stream_events(produce: Callable[[Callable[[dict[str, Any]], None]], Awaitable[None]]) -> AsyncIterator[str]:
    """Run ``produce(emit)`` as a task and yield what it emits as events, then ``[DONE]``; an engine error becomes an
    ``error`` event. Closing the stream (the client went) cancels the task."""
    chunks: asyncio.Queue = asyncio.Queue()

    async def run() -> None:
        try:
            await produce(chunks.put_nowait)
        except EngineError as exc:
            chunks.put_nowait({"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}})
        except ClientGone:
            pass
        finally:
            chunks.put_nowait(_END)

    task = asyncio.create_task(run())
    try:
        while (chunk := await chunks.get()) is not _END:
            yield event(chunk)
        yield DONE
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
