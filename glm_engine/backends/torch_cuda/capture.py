"""Capturing one callable into a CUDA graph so that a failure leaves the process as it found it.

Why not ``torch.cuda.graph``: its ``__exit__`` calls ``capture_end()`` and only then restores the stream it made
current. When an op inside the capture fails (a host sync, a library call that cannot be captured), the CUDA runtime
has already invalidated the capture, and ending it fails too: ``cudaStreamEndCapture`` documents that "if capture
was invalidated, due to a violation of the rules of stream capture, then a NULL graph will be returned", and torch's
``capture_end`` raises on it. That second error replaces the first (the op's own message, the one that says what to
fix), and the capture stream stays current. torch's ``CUDAGraph.capture_end`` also raises before it stops routing
the caching allocator's allocations to the graph's memory pool, and a graph whose capture never ended does not give
that pool back on ``reset()``.

:func:`cuda_graph_capture` therefore calls ``capture_begin``/``capture_end`` itself, inside its own
``torch.cuda.stream`` context (which restores the previous stream however the block ends), and on failure:

1. ends the capture (``capture_end``; its own error is kept as a note on the first, never raised instead of it), so
   the stream leaves capture mode, as CUDA requires of an invalidated capture;
2. gives the graph's memory pool back: through ``reset()`` when the capture ended, otherwise by ending the pool's
   allocation route and releasing it (the two allocator calls ``torch.cuda.use_mem_pool`` makes on exit: torch has
   no public call for this case);
3. synchronizes the device: an error there is not a capture problem (a sticky CUDA error, an illegal address) and is
   raised as it is, since eager steps could not run either;
4. raises :class:`CaptureFailed` with the first error's type and message, chained to it; the decoder then runs its
   steps eagerly and records the reason.

The CUDA and allocator calls go through :class:`GraphApi`, so tests run this logic on the CPU with a double that
follows the documented behaviour (``capture_end`` failing after a failed op, pool routing, the current stream).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from typing import Any, Protocol

import torch


class CaptureFailed(RuntimeError):
    """A capture failed and was cleaned up (stream restored, capture ended, pool given back): eager steps can go on.

    The message leads with the first error (the failing op's type and message); ``end_error`` is what ending the
    invalidated capture then raised, if anything."""

    def __init__(self, first: BaseException, end_error: BaseException | None) -> None:
        message = f"{type(first).__name__}: {first}"
        if end_error is not None:
            message += f" (ending the invalidated capture then raised {type(end_error).__name__}: {end_error})"
        super().__init__(message)
        self.first = first
        self.end_error = end_error


class GraphApi(Protocol):
    """The CUDA-graph, stream and allocator calls a capture makes (``TorchGraphApi``; a double in the tests)."""

    def new_graph(self) -> Any: ...

    def new_pool(self) -> Any: ...

    def side_stream(self) -> Any: ...

    def use_stream(self, stream: Any) -> AbstractContextManager[Any]: ...

    def is_capturing(self) -> bool: ...

    def end_pool_route(self, pool: Any) -> None: ...

    def synchronize(self) -> None: ...


class TorchGraphApi:
    """:class:`GraphApi` on torch.cuda, for the current device."""

    def new_graph(self) -> Any:
        return torch.cuda.CUDAGraph()

    def new_pool(self) -> Any:
        return torch.cuda.graph_pool_handle()  # one pool per graph: nothing of one graph is reused by another

    def side_stream(self) -> Any:
        return torch.cuda.Stream()  # capture needs a stream other than the default one (torch's capture_begin)

    def use_stream(self, stream: Any) -> AbstractContextManager[Any]:
        return torch.cuda.stream(stream)

    def is_capturing(self) -> bool:
        return torch.cuda.is_current_stream_capturing()

    def end_pool_route(self, pool: Any) -> None:
        """Stop routing allocations to ``pool`` if they still are, and give back the capture's use of it if it holds
        one (a fresh pool per capture: nothing else uses it)."""
        device = torch.cuda.current_device()
        # torch 2.5+ names it _cuda_endAllocateToPool; before, the same call was _cuda_endAllocateCurrentStreamToPool
        names = ("_cuda_endAllocateToPool", "_cuda_endAllocateCurrentStreamToPool")
        end = next((getattr(torch._C, name) for name in names if hasattr(torch._C, name)), None)
        if end is not None:
            with suppress(RuntimeError):  # "not currently recording": never routed, or capture_end ended the route
                end(device, pool)
        with suppress(RuntimeError):  # the allocator's assert when capture_begin failed before creating the pool
            torch._C._cuda_releasePool(device, pool)

    def synchronize(self) -> None:
        torch.cuda.synchronize()


def cuda_graph_capture(step: Callable[[], torch.Tensor], api: GraphApi | None = None) -> Callable[[], torch.Tensor]:
    """Capture ``step`` (already run once, eagerly, by the caller) into a CUDA graph; return its replay.

    Raises :class:`CaptureFailed` after cleaning up when the capture fails (module docstring); what
    ``synchronize`` raises after such a failure is raised as it is (its context is the capture's error)."""
    api = api or TorchGraphApi()
    graph, pool = api.new_graph(), api.new_pool()
    stream = api.side_stream()
    api.synchronize()  # capture must not begin while other streams still run work it would wait on
    with api.use_stream(stream):  # the previous stream is current again however this block ends
        try:
            graph.capture_begin(pool=pool)
        except Exception as first:  # may have routed the pool already (torch routes it before the capture begins)
            raise _abandon(api, graph, pool, first, end_capture=False) or CaptureFailed(first, None) from first
        try:
            out = step()
        except BaseException as first:
            failure = _abandon(api, graph, pool, first, end_capture=True)
            if failure is None:
                raise
            raise failure from first
        try:
            graph.capture_end()
        except Exception as first:  # nothing failed before, but ending did: the capture is lost all the same
            raise _abandon(api, graph, pool, first, end_capture=False) or CaptureFailed(first, None) from first

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


def _abandon(api: GraphApi, graph: Any, pool: Any, first: BaseException, end_capture: bool) -> CaptureFailed | None:
    """Clean up after a failed capture (steps 1-3 of the module docstring); the error to raise (step 4), or None for
    a ``first`` that is not an ``Exception`` (KeyboardInterrupt, SystemExit), which the caller passes on unchanged."""
    end_error: Exception | None = None
    ended = False
    if end_capture:
        try:
            graph.capture_end()
            ended = True
        except Exception as exc:  # the invalidated capture's own error: kept, never raised instead of the first
            end_error = exc
    if api.is_capturing():
        raise RuntimeError(f"the CUDA stream is still capturing after a failed capture ({first})")
    if ended:
        graph.reset()  # the graph's reset gives back the pool of a capture that ended
    else:
        api.end_pool_route(pool)
    api.synchronize()  # a device error here is not the capture's, and eager steps could not run either: raised
    return CaptureFailed(first, end_error) if isinstance(first, Exception) else None
