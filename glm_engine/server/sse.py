"""Server-sent events: chunks as ``data: {json}`` lines, ending with ``data: [DONE]``; producers run as tasks that
are cancelled (and so cancel their requests) when the client goes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from glm_engine.errors import GlmEngineError
from glm_engine.server.generation import ClientGone, EngineError

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
_END = object()


def event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def stream_events(produce: Callable[[Callable[[dict[str, Any]], None]], Awaitable[None]]) -> AsyncIterator[str]:
    """Run ``produce(emit)`` as a task and yield what it emits as events, then ``[DONE]``; an engine error becomes an
    ``error`` event. Closing the stream (the client went) cancels the task."""
    chunks: asyncio.Queue = asyncio.Queue()

    def error(message: str, kind: str) -> None:
        chunks.put_nowait({"error": {"message": message, "type": kind, "param": None, "code": None}})

    async def run() -> None:
        try:
            await produce(chunks.put_nowait)
        except ClientGone:
            pass
        except GlmEngineError as exc:  # refused after the stream began (the queue filled, a later blank too long)
            error(str(exc), "invalid_request_error")
        except EngineError as exc:
            error(f"the engine failed: {exc}", "server_error")
        except Exception as exc:  # a defect: the client hears of it, the log has the traceback
            log.exception("a streamed request failed")
            error(f"{type(exc).__name__}: {exc}", "server_error")
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
