"""A double of the CUDA-graph, stream and allocator calls ``backends/torch_cuda/capture.py`` makes, following their
documented behaviour, so the clean-up after a failed capture is tested without a GPU:

- capture begins on the current stream, which must not be the default stream (torch's ``capture_begin``), and
  routes the caching allocator's allocations to the graph's memory pool (one use of the pool);
- an op that is not permitted while a stream captures (a host sync) raises, and invalidates the capture (CUDA's
  stream-capture rules);
- ``capture_end`` on an invalidated capture ends it (the stream is no longer capturing) and raises, as
  ``cudaStreamEndCapture`` returns an error and no graph for an invalidated capture; torch raises it before it ends
  the allocator's routing to the pool;
- a successful ``capture_end`` ends the routing; the graph's ``reset()`` gives the pool back only after a capture
  that ended (a failed capture's pool must be given back by the caller, ``end_pool_route``);
- ``synchronize`` raises a sticky device error (an illegal address) once one happened, as every later CUDA call
  would.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

NOT_PERMITTED = "CUDA error: operation not permitted when stream is capturing"
INVALIDATED = "CUDA error: operation failed due to a previous error during capture"


class FakeGraph:
    def __init__(self, cuda: FakeCudaGraphs) -> None:
        self.cuda = cuda
        self.pool: Any = None
        self.ended = False
        self.replays = 0

    def capture_begin(self, pool: Any = None) -> None:
        cuda = self.cuda
        if cuda.current == cuda.DEFAULT:
            raise RuntimeError("CUDA graphs must be captured on a non-default stream.")
        self.pool = pool
        cuda.routes.add(pool)
        cuda.pool_uses[pool] += 1
        cuda.capturing, cuda.invalidated = cuda.current, False

    def capture_end(self) -> None:
        cuda = self.cuda
        if cuda.capturing != cuda.current:
            raise RuntimeError("Capture must end on the same stream it began on.")
        cuda.capturing = None  # ended, whatever happens next
        if cuda.invalidated:
            raise RuntimeError(INVALIDATED)  # before the allocator's route to the pool is ended
        cuda.routes.discard(self.pool)
        self.ended = True

    def reset(self) -> None:
        if self.ended:
            self.cuda.pool_uses[self.pool] -= 1
            self.ended = False

    def replay(self) -> None:
        if not self.ended:
            raise RuntimeError("Called CUDAGraph::replay without a preceding successful capture.")
        self.replays += 1


class FakeCudaGraphs:
    """The capture API of ``capture.py`` (``GraphApi``), with the state a test checks afterwards."""

    DEFAULT = "default stream"

    def __init__(self) -> None:
        self.current = self.DEFAULT
        self.capturing: str | None = None
        self.invalidated = False
        self.routes: set[Any] = set()
        self.pool_uses: Counter[Any] = Counter()
        self.sticky: Exception | None = None
        self.graphs: list[FakeGraph] = []
        self._streams = 0
        self._pools = 0

    # --- what the test's step calls ---

    def op(self, permitted_while_capturing: bool = True) -> None:
        """One op of the step; a forbidden one (a host sync) raises while capturing and invalidates the capture."""
        if self.sticky is not None:
            raise self.sticky
        if self.capturing is not None and not permitted_while_capturing:
            self.invalidated = True
            raise RuntimeError(NOT_PERMITTED)

    # --- GraphApi ---

    def new_graph(self) -> FakeGraph:
        self.graphs.append(FakeGraph(self))
        return self.graphs[-1]

    def new_pool(self) -> tuple[int, int]:
        self._pools += 1
        return (0, self._pools)

    def side_stream(self) -> str:
        self._streams += 1
        return f"side stream {self._streams}"

    @contextmanager
    def use_stream(self, stream: str) -> Iterator[None]:
        previous, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = previous

    def is_capturing(self) -> bool:
        return self.capturing is not None and self.capturing == self.current

    def end_pool_route(self, pool: Any) -> None:
        self.routes.discard(pool)
        if self.pool_uses[pool] > 0:
            self.pool_uses[pool] -= 1
        if any(g.pool == pool and g.ended for g in self.graphs):
            raise AssertionError("a pool held by a graph whose capture ended was given back behind its back")

    def synchronize(self) -> None:
        if self.sticky is not None:
            raise self.sticky

    # --- what a test asserts ---

    def clean(self) -> bool:
        """No stream capturing, the default stream current, no allocation routed to a pool, no pool held by a
        graph that failed."""
        held = {g.pool for g in self.graphs if g.ended}
        leaked = {pool for pool, uses in self.pool_uses.items() if uses and pool not in held}
        return self.capturing is None and self.current == self.DEFAULT and not self.routes and not leaked
