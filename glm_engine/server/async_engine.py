"""The serving core on its own thread: requests go in from the event loop, each request's step outputs come back on
its own asyncio queue. The core is touched only by that thread; the event loop never waits for a step."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from glm_engine.errors import InputError
from glm_engine.serving.core import CoreStats, EngineCore, StepOutput
from glm_engine.serving.lockstep import STOP, AbortEvent, AddEvent, Event, JobEvent, JobResult, apply, with_seed
from glm_engine.serving.sampling import SamplingParams

log = logging.getLogger(__name__)
IDLE_WAIT_S = 0.5  # how long the idle thread sleeps between looks at its inbox (it is woken at once by a request)


class QueueFull(InputError):
    """More requests wait than ``max_queue`` allows (HTTP 429)."""


class Draining(InputError):
    """The server is shutting down and admits nothing new (HTTP 503)."""


@dataclass(frozen=True)
class EngineFailure:
    """Put on every open request's queue when a step raised: the server stops with this message."""

    message: str


@dataclass(frozen=True)
class _Submit:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    end_token_ids: tuple[int, ...]
    banned: tuple[slice, ...]
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue


@dataclass(frozen=True)
class _Job:
    event: JobEvent
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue


class AsyncEngine:
    """Submit, cancel and read the gauges of an :class:`EngineCore` stepping on a background thread."""

    def __init__(
        self,
        core: EngineCore,
        max_queue: int,
        comm: Any = None,
        jobs: Callable[[JobEvent], JobResult] | None = None,
    ) -> None:
        self.core = core
        self.jobs = jobs  # runs a JobEvent on the engine thread (beam search); None: jobs are refused
        self.max_queue = max_queue
        self.comm = comm if comm is not None and comm.world_size > 1 else None  # followers to keep in lockstep
        self.draining = False
        self.failure: str | None = None
        self._inbox: queue.SimpleQueue[_Submit | _Job | str] = queue.SimpleQueue()  # requests, jobs, ids to cancel
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._streams: dict[str, _Submit] = {}  # requests the core runs (guarded by _lock, as is _queued)
        self._queued = 0  # submitted but not yet handed to the core
        self._lock = threading.Lock()
        self._stats = core.stats()
        self._thread = threading.Thread(target=self._run, name="glm-engine-core", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    @property
    def stats(self) -> CoreStats:
        """The gauges after the last step (read without touching the core)."""
        return self._stats

    def check(self, prompt: Sequence[int], params: SamplingParams) -> None:
        """Refuse now what :meth:`submit` would refuse: a failed or draining engine, a full queue, a request that can
        never fit (so a stream can answer with the right status before it starts)."""
        if self.failure is not None:
            raise Draining(f"the engine failed and the server is stopping: {self.failure}")
        if self.draining:
            raise Draining("the server is shutting down; retry on another instance")
        if self._stats.waiting + self._queued >= self.max_queue:
            raise QueueFull(f"{self.max_queue} requests are already waiting; retry later")
        self.core.check_request(prompt, params)

    def submit(
        self,
        request_id: str,
        prompt: Sequence[int],
        params: SamplingParams,
        end_token_ids: Sequence[int],
        banned: tuple[slice, ...] = (),
    ) -> asyncio.Queue:
        """Queue a request; its :class:`StepOutput`s (or one :class:`EngineFailure`) arrive on the returned queue."""
        self.check(prompt, params)
        outputs: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        item = _Submit(request_id, list(prompt), params, tuple(end_token_ids), banned, loop, outputs)
        with self._lock:
            self._queued += 1
        self._inbox.put(item)
        self._wake.set()
        return outputs

    def submit_job(self, request_id: str, prompt: str, options: dict[str, Any]) -> asyncio.Queue:
        """Queue a job (a request outside the batch, run between two steps); one :class:`JobResult` or
        :class:`EngineFailure` arrives on the returned queue."""
        if self.jobs is None:
            raise InputError("this server runs no jobs outside the batch")
        self.check([0], SamplingParams(max_tokens=1))
        outputs: asyncio.Queue = asyncio.Queue()
        with self._lock:
            self._queued += 1
        self._inbox.put(_Job(JobEvent(request_id, prompt, options), asyncio.get_running_loop(), outputs))
        self._wake.set()
        return outputs

    def cancel(self, request_id: str) -> None:
        """Cancel a request (a client gone, a deadline passed); its blocks are freed before the next step."""
        self._inbox.put(request_id)
        self._wake.set()

    def cancel_all(self) -> None:
        with self._lock:
            running = list(self._streams)
        for request_id in running:
            self.cancel(request_id)

    # --- the core's thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                events = self._take_inbox()
                if not events and not self.core.has_work:
                    self._wake.wait(IDLE_WAIT_S)
                    self._wake.clear()
                    continue
                if self.comm is not None:
                    self.comm.broadcast_object([event for event, _ in events])
                for event, stream in events:
                    self._apply(event, stream)
                self._stats = self.core.stats()
                if self.core.has_work:
                    outputs = self.core.step()
                    self._stats = self.core.stats()
                    for out in outputs:
                        self._deliver(out)
            if self.comm is not None:
                self.comm.broadcast_object(STOP)
        except Exception as exc:  # a failing engine stops the server with its error, every request told
            log.exception("the engine failed")
            self._fail(f"{type(exc).__name__}: {exc}")

    def _fail(self, message: str) -> None:
        """Tell every request, running or still in the inbox, that the engine failed."""
        self.failure = message
        with self._lock:
            streams, self._streams = list(self._streams.values()), {}
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, str):
                streams.append(item)
        for stream in streams:
            _post(stream, EngineFailure(message))

    def _take_inbox(self) -> list[tuple[Event, Any]]:
        """What arrived since the last step, as events (requests with their seeds fixed, cancellations)."""
        events: list[tuple[Event, Any]] = []
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return events
            if isinstance(item, str):
                events.append((AbortEvent(item), None))
                continue
            with self._lock:
                self._queued -= 1
            if isinstance(item, _Job):
                events.append((item.event, item))
                continue
            event = AddEvent(item.request_id, item.prompt, with_seed(item.params), item.end_token_ids, item.banned)
            events.append((event, item))

    def _apply(self, event: Event, stream: Any) -> None:
        if isinstance(event, JobEvent):
            try:
                result: JobResult | EngineFailure = self.jobs(event)
            except InputError as exc:
                result = EngineFailure(str(exc))
            _post(stream, result)
            return
        if isinstance(event, AbortEvent):
            if self.core.sequence(event.request_id) is not None:
                apply(self.core, event)
                self._deliver(StepOutput(event.request_id, None, True, "abort"))
            return
        refused = apply(self.core, event)
        if refused is not None:
            _post(stream, EngineFailure(refused))
            return
        with self._lock:
            self._streams[event.request_id] = stream

    def _deliver(self, out: StepOutput) -> None:
        with self._lock:
            stream = self._streams.pop(out.request_id, None) if out.finished else self._streams.get(out.request_id)
        if stream is not None:
            _post(stream, out)


def _post(stream: _Submit | _Job, item: StepOutput | JobResult | EngineFailure) -> None:
    """Hand ``item`` to the request's event loop (gone at shutdown: nobody is listening any more)."""
    with contextlib.suppress(RuntimeError):
        stream.loop.call_soon_threadsafe(stream.outputs.put_nowait, item)
