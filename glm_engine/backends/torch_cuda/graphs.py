"""The cached decode step captured in a CUDA graph and replayed, one token per row per step.

This is the decode stepper of the ``torch.cuda`` op tables (``TorchCudaOps.decode_stepper`` in ``ops.py``, which
generation reaches through ``runner.decode_stepper``); HIP builds of torch capture the same graphs, opt-in.

A decode step of a large model launches a few kernels per op per layer (GLM-130B: ~70 layers x ~20 launches) on
tiny tensors, so at small batch the CPU's launch overhead, not the GPU, sets the step time. A CUDA graph records the
whole step once and replays it with a single launch. A graph replays fixed addresses and fixed shapes, so the step is
rewritten to need nothing else:

- static input buffers ``input_ids [b, 1]``, ``position_ids`` (the runner's layout with one column: ``[b, 1]``, or
  ChatGLM's ``[b, 2, 1]``) and ``blocked [b, 1, 1, max_length]``, copied into before each replay;
- a view of the decode's own KV cache (:class:`GraphKVCache`, the same storage) that writes the new key/value at a
  position held in a device tensor and returns a fixed-length prefix of the preallocated cache to attention, with
  every position at or after the current length blocked in the mask buffer. Attention therefore has the same shape
  at every replay of one graph.

How long that prefix is depends on the decode attention. The Triton decode kernel skips fully blocked tiles, so it is
handed the whole cache (``max_length`` keys) and the empty part costs one mask byte per position: one graph serves
the whole decode. SDPA (fp32 decode, or no Triton) does work for every key it is handed, blocked or not, so there the
prefix is a *bucket*: the power of two at or above the filled length (at least ``MIN_KEY_BUCKET``, at most
``max_length``), one graph per bucket, captured when the decode first reaches it (:func:`key_bucket`). A step then
attends over fewer than twice the filled keys, and a decode to ``max_length`` captures at most
``log2(max_length / MIN_KEY_BUCKET) + 1`` graphs (6 for 2048). Buckets on a linear grid (every 256 keys, say) would
waste less per step but capture ``max_length / 256`` graphs, each with its own memory pool (one step's activations);
slicing to the exact filled length would need a capture per step, which is no graph at all.

The first step of a graph runs eagerly on a side stream (compiling Triton kernels and creating library workspaces,
which capture forbids) and produces that step's logits; capture follows and later steps replay. The model code is
unchanged: it calls ``cache.update`` and ``ops.attention`` as always.

When a graph is not usable the steps run eagerly, and the stepper says why (:func:`graphs_verdict`): not on CUDA,
disabled (``GLM_ENGINE_CUDA_GRAPHS=0`` or ``cuda_graphs=False``), HIP without an explicit opt-in (no ROCm run has
backed them yet), tensor parallelism (collectives are not captured here), a graph-level runner, or too few steps to
repay a capture. A capture that fails (an op that syncs with the host, a stack that cannot capture it) switches the
decoder to eager steps with the reason; the failed step's logits come from its warm-up, so no token is lost. Beam
search reorders cache rows in place (same storage, so the graph stays valid) but its first step replaces the cache
by one with more rows: the decoder then captures once more for the new batch, at most ``MAX_CAPTURES`` times per
decode, and runs eagerly after that. How a failed capture is cleaned up (its first error kept, the stream and the
allocator left usable) is ``capture.py``'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from glm_engine.backends.base import ModelRunner, Verdict
from glm_engine.backends.torch_cuda.capture import CaptureFailed, cuda_graph_capture
from glm_engine.model.kv_cache import KVCache

ENV_VAR = "GLM_ENGINE_CUDA_GRAPHS"  # "0" turns decode-step graphs off (default: on for CUDA), "1" on for HIP too
MIN_GRAPH_STEPS = 4  # decodes with fewer cached steps run eagerly: capture costs about two eager steps
MAX_CAPTURES = 2  # per decode: the first batch shape, and the beam-expanded one (key buckets not counted)
MIN_KEY_BUCKET = 64  # the shortest key prefix a bucketed graph attends over (the Triton kernels' key tile is 16-64)


def key_bucket(filled: int, max_length: int, minimum: int = MIN_KEY_BUCKET) -> int:
    """The key length a bucketed graph step attends over when ``filled`` positions (the new one included) hold keys:
    the power of two at or above ``filled``, at least ``minimum``, at most ``max_length``."""
    return min(max_length, max(minimum, 1 << max(filled - 1, 0).bit_length()))


def graphs_verdict(runner: ModelRunner, requested: bool | None = None, steps: int | None = None) -> Verdict:
    """Whether decode steps of ``runner`` should be CUDA graphs, and why (not): from the caller's request (None: the
    runner's ``cuda_graphs`` attribute, else ``GLM_ENGINE_CUDA_GRAPHS``), the device, the torch build and the
    runner's declared capabilities (op-level, tensor-parallel degree)."""
    if requested is None:
        requested = getattr(runner, "cuda_graphs", None)
    if requested is False:
        return Verdict(False, "CUDA graphs disabled by the caller")
    if requested is None and os.environ.get(ENV_VAR, "1").strip() in ("0", "false", "no", "off"):
        return Verdict(False, f"CUDA graphs disabled by {ENV_VAR}=0")
    if runner.device.type != "cuda":
        return Verdict(False, f"CUDA graphs need a cuda device; this model runs on {runner.device.type}")
    if torch.version.hip and requested is None and os.environ.get(ENV_VAR, "").strip() != "1":
        return Verdict(False, f"HIP graphs are opt-in until a ROCm run backs them: {ENV_VAR}=1 or cuda_graphs=True")
    if not runner.capabilities.op_level:
        return Verdict(False, "the runner runs an exported graph, not glm-engine's ops")
    if runner.capabilities.tensor_parallel > 1:
        return Verdict(False, "tensor parallel: the step's collectives are not captured")
    if steps is not None and steps < MIN_GRAPH_STEPS:
        return Verdict(False, f"{steps} cached steps do not repay a capture (fewer than {MIN_GRAPH_STEPS})")
    return Verdict(True, "decode steps replay a CUDA graph")


class CaptureError(RuntimeError):
    """Capturing a step failed after its eager warm-up ran; carries that step's logits so decoding goes on."""

    def __init__(self, message: str, logits: torch.Tensor) -> None:
        super().__init__(message)
        self.logits = logits


class GraphKVCache(KVCache):
    """A view of a :class:`KVCache`'s storage for a captured step: one token per row, written at ``write_index``.

    ``update`` returns the keys/values of the first ``key_length`` positions (all ``max_length`` unless the owner
    sets a bucket); the caller blocks the unwritten ones. ``advance`` does nothing: the owner of the graph sets
    ``write_index`` before each replay and advances the real cache after it.
    """

    def __init__(self, cache: KVCache) -> None:  # shares storage; allocates only the index
        self.storage = cache.storage
        self.length = cache.length
        self.write_index = torch.zeros(1, dtype=torch.long, device=cache.storage.device)
        self.key_length = cache.max_length

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if k.shape[2] != 1:
            raise ValueError(f"a captured decode step writes one token per row, got {k.shape[2]}")
        keys, values = self.storage[layer, 0], self.storage[layer, 1]
        keys.index_copy_(2, self.write_index, k)
        values.index_copy_(2, self.write_index, v)
        return keys[:, :, : self.key_length], values[:, :, : self.key_length]

    def advance(self, num_tokens: int) -> None:
        return None


Capture = Callable[[Callable[[], torch.Tensor]], Callable[[], torch.Tensor]]


class DecodeGraph:
    """Static buffers and the captured steps for one cache storage and batch shape: one graph, or one per key bucket
    when ``key_buckets`` (module docstring).

    ``capture`` turns the step closure into a replay function; the default records a CUDA graph
    (:func:`~glm_engine.backends.torch_cuda.capture.cuda_graph_capture`). Tests pass ``lambda step: step`` to run the
    same buffers eagerly on the CPU, or that function with a double of the CUDA calls.
    """

    def __init__(
        self,
        runner: ModelRunner,
        cache: KVCache,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        blocked: torch.Tensor,
        capture: Capture = cuda_graph_capture,
        key_buckets: bool = False,
    ) -> None:
        self.runner = runner
        self.storage = cache.storage
        self.cache = GraphKVCache(cache)
        device = cache.storage.device
        self.input_ids = torch.zeros_like(input_ids, device=device)
        self.position_ids = torch.zeros_like(position_ids, device=device)
        self.blocked = torch.ones(blocked.shape[0], 1, 1, cache.max_length, dtype=torch.bool, device=device)
        self.key_buckets = key_buckets
        self._capture = capture
        self._replays: dict[int, Callable[[], torch.Tensor]] = {}  # key length -> the replay of its graph

    @property
    def captured(self) -> list[int]:
        """The key lengths captured so far (one entry, ``max_length``, without buckets)."""
        return list(self._replays)

    def matches(
        self, cache: KVCache, input_ids: torch.Tensor, position_ids: torch.Tensor, blocked: torch.Tensor
    ) -> bool:
        """Whether this graph can run the step: same cache storage, same shapes, a free cache position left."""
        return (
            cache.storage is self.storage
            and input_ids.shape == self.input_ids.shape
            and position_ids.shape == self.position_ids.shape
            and blocked.shape[0] == self.blocked.shape[0]
            and blocked.shape[-1] == cache.length + 1
            and cache.length < cache.max_length
        )

    def key_length(self, cache: KVCache) -> int:
        """How many cached positions the step at ``cache.length`` attends over (its bucket, or the whole cache)."""
        if not self.key_buckets:
            return cache.max_length
        return key_bucket(cache.length + 1, cache.max_length, MIN_KEY_BUCKET)

    def _forward(self, key_length: int) -> torch.Tensor:
        self.cache.key_length = key_length  # read while the step is traced (warm-up, capture), fixed in the graph
        return self.runner.forward(self.input_ids, self.position_ids, self.blocked[..., :key_length], self.cache)

    def load(self, cache: KVCache, input_ids: torch.Tensor, position_ids: torch.Tensor, blocked: torch.Tensor) -> None:
        """Copy one step's inputs into the static buffers; positions from ``cache.length`` on stay blocked."""
        filled = cache.length + 1
        self.input_ids.copy_(input_ids)
        self.position_ids.copy_(position_ids)
        self.blocked[..., :filled].copy_(blocked.reshape(blocked.shape[0], 1, 1, filled))
        self.blocked[..., filled:] = True
        self.cache.write_index.fill_(cache.length)

    def step(
        self, cache: KVCache, input_ids: torch.Tensor, position_ids: torch.Tensor, blocked: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[b, 1, vocab]`` of one decode step; the new keys/values land in ``cache``, which advances.

        A step whose key length has no graph yet runs eagerly (the warm-up) and is then captured; a capture that
        fails raises :class:`CaptureError` with that step's logits, after the cache advanced."""
        self.load(cache, input_ids, position_ids, blocked)
        key_length = self.key_length(cache)
        replay = self._replays.get(key_length)
        if replay is None:
            logits = self._warm_up(key_length)
            try:
                self._replays[key_length] = self._capture(lambda: self._forward(key_length))
            except CaptureFailed as exc:  # cleaned up (capture.py); the step itself already ran eagerly
                cache.advance(1)
                raise CaptureError(str(exc), logits) from exc
        else:
            logits = replay().clone()
        cache.advance(1)
        return logits

    def _warm_up(self, key_length: int) -> torch.Tensor:
        """The first step at ``key_length``, run eagerly (on a side stream on CUDA, as capture requires of preceding
        work)."""
        if self.storage.device.type != "cuda":
            return self._forward(key_length)
        stream = torch.cuda.Stream(self.storage.device)
        stream.wait_stream(torch.cuda.current_stream(self.storage.device))
        with torch.cuda.stream(stream):
            logits = self._forward(key_length)
        torch.cuda.current_stream(self.storage.device).wait_stream(stream)
        return logits


class GraphedDecoder:
    """Runs decode steps through :class:`DecodeGraph` where possible, eagerly otherwise; re-captures when the cache
    changes (beam expansion) up to ``MAX_CAPTURES`` times. ``reason`` says how the steps ran; ``fallback`` says why
    graphs stopped ("" while they run), for the reports.

    ``key_buckets``: hand attention a power-of-two bucket of the cache instead of all of it (module docstring); the
    op table sets it where decode attention does work for every key (``TorchCudaOps.decode_reads_every_key``)."""

    def __init__(
        self, runner: ModelRunner, verdict: Verdict, capture: Capture = cuda_graph_capture, key_buckets: bool = False
    ) -> None:
        self.runner = runner
        self.enabled = verdict.ok
        self.reason = verdict.reason
        if key_buckets:
            self.reason += "; keys attended in power-of-two buckets of the filled cache, one graph per bucket"
        self.fallback = ""
        self.captures = 0
        self.graph_steps = 0
        self.eager_steps = 0
        self.key_buckets = key_buckets
        self._graph: DecodeGraph | None = None
        self._capture = capture

    def step(
        self, cache: KVCache, input_ids: torch.Tensor, position_ids: torch.Tensor, blocked: torch.Tensor
    ) -> torch.Tensor:
        """Logits of one cached decode step (``input_ids [b, 1]``, ``blocked [b or 1, 1, 1, cache.length + 1]``)."""
        graph = self._graph_for(cache, input_ids, position_ids, blocked)
        if graph is None:
            self.eager_steps += 1
            return self.runner.forward(input_ids, position_ids, blocked, cache)
        self.graph_steps += 1
        try:
            return graph.step(cache, input_ids, position_ids, blocked)
        except CaptureError as exc:  # the step itself ran eagerly; never fail a generation over a graph
            self.enabled, self._graph = False, None
            self.fallback = f"graph capture failed, later steps run eagerly: {exc}"
            self.reason = self.fallback
            return exc.logits

    def _graph_for(
        self, cache: KVCache, input_ids: torch.Tensor, position_ids: torch.Tensor, blocked: torch.Tensor
    ) -> DecodeGraph | None:
        if not self.enabled or cache.length >= cache.max_length:
            return None
        if self._graph is not None and self._graph.matches(cache, input_ids, position_ids, blocked):
            return self._graph
        if self.captures >= MAX_CAPTURES:
            self.reason = f"the cache changed shape more than {MAX_CAPTURES} times; later steps run eagerly"
            return None
        self._graph = DecodeGraph(
            self.runner, cache, input_ids, position_ids, blocked, self._capture, key_buckets=self.key_buckets
        )
        self.captures += 1
        return self._graph
