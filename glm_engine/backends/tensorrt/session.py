"""One TensorRT engine and its one execution context, with the I/O bound by name: what ``TrtRunner`` does between a
torch call and ``execute_async_v3``. The ``tensorrt`` module, the device and the CUDA stream handle are passed in, so
the same code runs against a stand-in of the tensorrt module on the CPU in the tests (``tests/trt_double.py``).

What it relies on (TensorRT 10 Python API, docs/export.md#tensorrt-engines, and ``NvInferRuntime.h``):

- ``trt.Runtime(logger).deserialize_cuda_engine(bytes)``. The logger and the runtime are held as long as the engine
  (:attr:`EngineSession.runtime`): TensorRT's "How TensorRT Works" page (Object Lifetimes) sets out which objects
  must outlive which to avoid "crashes and undefined behavior", the logger outliving the runtime objects; a runtime
  held only by a local variable is collected as soon as the constructor returns, and nothing documents that the
  engine keeps it alive.
- **One** execution context for both profiles, its activation memory supplied once. The two contexts this used to
  keep (one per profile, TensorRT's default ``STATIC`` strategy: "allocation with the maximum size across all
  profiles") each allocated the larger profile's activation memory. Now the context is created with
  ``ExecutionContextAllocationStrategy.USER_MANAGED`` ("The user supplies custom allocation to the execution
  context") and given one torch allocation, sized for the larger profile (``get_device_memory_size_for_profile_v2``
  of each) and 256-byte aligned, with ``set_device_memory(address, size)`` (TensorRT 10.1's ``setDeviceMemoryV2``; 10.0
  has only the ``device_memory`` property, used there). Being torch's, the memory shows in torch's memory statistics
  and its caching allocator rather than beside it. The context switches profile with
  ``set_optimization_profile_async(index, stream)`` only when a call needs the other one (a prefill after decode
  steps, or the first step after a prefill: twice per generation). The header: it "must be called before calling
  setInputShape() for all dynamic input tensors", the stream it enqueues on must be synchronized with the enqueue
  stream (it is the same stream here), and it "will trigger layer resource updates on the next call of
  enqueueV3()".
- ``set_input_shape(name, shape)`` for every input, ``get_tensor_shape(name)`` for the outputs, and
  ``set_tensor_address(name, ptr)`` for all of them before ``execute_async_v3(stream)``.

The KV tensors are bound to the cache's halves (:mod:`glm_engine.backends.tensorrt.kv_cache`): ``past`` is the current
half, ``present`` the other one, which the call then makes current. The inputs and logits use buffers allocated once
(``plan.binding_plan``).
"""

from __future__ import annotations

import math
from types import ModuleType

import torch

from glm_engine.backends.tensorrt.kv_cache import TrtKVCache, aligned_empty
from glm_engine.backends.tensorrt.plan import GraphIO, Limits, binding_plan, check_call, profile_for
from glm_engine.errors import BackendError, InputError
from glm_engine.exported.names import KV_KINDS, LOGITS, PAST_NAMES, PRESENT_NAMES

ROLE_DTYPES = {
    "input_ids": torch.int64,
    "position_ids": torch.int64,
    "attention_mask": torch.bool,
    "logits_to_keep": torch.int64,
}


def activation_bytes(engine: object) -> int:
    """The activation memory one context needs to run any of ``engine``'s profiles: the largest profile's
    (``get_device_memory_size_for_profile_v2``, TensorRT 10.1; ``get_device_memory_size_for_profile`` before)."""
    per_profile = getattr(engine, "get_device_memory_size_for_profile_v2", None)
    if per_profile is None:
        per_profile = engine.get_device_memory_size_for_profile
    return max(per_profile(index) for index in range(engine.num_optimization_profiles))


def attach_memory(context: object, address: int, size: int) -> None:
    """Give a ``USER_MANAGED`` context its activation memory: ``set_device_memory(address, size)`` where the
    binding has it (TensorRT 10.1+), else the ``device_memory`` property (10.0)."""
    if hasattr(context, "set_device_memory"):
        context.set_device_memory(address, size)
    else:
        context.device_memory = address


class EngineSession:
    """The deserialized engine, its runtime (kept alive with it), one execution context with its activation memory,
    and the I/O buffers."""

    def __init__(
        self,
        trt: ModuleType | object,
        engine_bytes: bytes,
        io: GraphIO,
        limits: Limits,
        profiles: list[str],
        device: torch.device,
        dtype: torch.dtype,
        stream: int,
        source: str,
    ) -> None:
        self.io, self.limits, self.profiles, self.device, self.dtype = io, limits, profiles, device, dtype
        self.stream = stream  # the CUDA stream handle every enqueue and profile switch goes to
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)  # must outlive the engine (see the module docstring)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise InputError(f"{source} does not load with TensorRT {trt.__version__} on this GPU: rebuild it")
        strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        self.context = self.engine.create_execution_context(strategy)
        if self.context is None:
            raise BackendError(f"TensorRT could not create an execution context for {source} (its log says why)")
        self.activation_bytes = activation_bytes(self.engine)
        try:  # kept as long as the context: TensorRT only holds its address
            self.activations = aligned_empty(max(self.activation_bytes, 1), torch.uint8, device)
        except torch.cuda.OutOfMemoryError as error:
            raise BackendError(
                f"{source} needs {self.activation_bytes / 2**30:.2f} GiB of activation memory, which does not fit: "
                "free GPU memory, or rebuild with smaller --max-batch/--max-seq"
            ) from error
        attach_memory(self.context, self.activations.data_ptr(), self.activation_bytes)
        self.profile: int | None = None  # the context's profile; set on the first call
        self.switches = 0  # profile switches so far (each costs a resource update on the next enqueue)
        self.plan = binding_plan(io, limits)
        self.buffers = {
            b.name: aligned_empty(b.capacity, ROLE_DTYPES.get(b.role, dtype), device) for b in self.plan if b.buffered
        }

    def new_cache(self, batch_size: int, max_length: int) -> TrtKVCache:
        io = self.io
        return TrtKVCache(io.num_layers, batch_size, io.num_kv_heads, max_length, io.head_size, self.dtype, self.device)

    def select_profile(self, name: str) -> None:
        """Make profile ``name`` the context's, switching only when it is not already."""
        index = self.profiles.index(name)
        if index == self.profile:
            return
        if not self.context.set_optimization_profile_async(index, self.stream):
            raise BackendError(f"TensorRT refused to switch the execution context to its {name} profile")
        self.profile = index
        self.switches += 1

    def run(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        blocked: torch.Tensor,
        cache: TrtKVCache,
        last_only: bool,
    ) -> torch.Tensor:
        """Logits ``[b, s, vocab]`` (``[b, 1, vocab]`` with ``last_only``) for ``input_ids [b, s]`` after
        ``cache.length`` cached positions; the cache is ``s`` positions longer afterwards. Call it on the stream
        whose handle the session holds (the feeds are copied on the current torch stream)."""
        b, s = input_ids.shape
        past = cache.length
        check_call(self.limits, b, past, s)
        cache.check_room(s)
        if b != cache.batch_size:
            raise InputError(f"the input has {b} rows but the KV cache was made for {cache.batch_size}")
        self.select_profile(profile_for(past, s))  # before any input shape, as the API requires
        feeds = {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "attention_mask": blocked.expand(b, 1, s, past + s),
        }
        if self.io.keeps_logits:  # the last position for generation, every one for scoring
            feeds["logits_to_keep"] = torch.arange(s - 1 if last_only else 0, s, device=self.device)
        for name, value in feeds.items():
            view = self.buffers[name][: value.numel()].view(value.shape)
            if view.numel():
                view.copy_(value, non_blocking=True)
            self._bind(name, view, is_input=True)
        for layer in range(self.io.num_layers):
            for kind, label in enumerate(KV_KINDS):
                self._bind(PAST_NAMES[label] % layer, cache.past(layer, kind), is_input=True)
        logits_shape = tuple(self.context.get_tensor_shape(LOGITS))
        logits = self.buffers[LOGITS][: math.prod(logits_shape)].view(logits_shape)
        self._bind(LOGITS, logits, is_input=False)
        for layer in range(self.io.num_layers):
            for kind, label in enumerate(KV_KINDS):
                self._bind(PRESENT_NAMES[label] % layer, cache.present(layer, kind, s), is_input=False)
        if not self.context.execute_async_v3(self.stream):
            raise BackendError("TensorRT refused to run this call (its log above says why)")
        cache.commit(s)
        return (logits[:, -1:] if last_only else logits).clone()

    def _bind(self, name: str, view: torch.Tensor, is_input: bool) -> None:
        """Bind ``view`` (dense) as tensor ``name``: an input's shape is set, an output's checked against the one
        TensorRT computes from the inputs."""
        shape = tuple(view.shape)
        if is_input:
            if not self.context.set_input_shape(name, shape):
                raise InputError(
                    f"the TensorRT engine's profile does not take {name} of shape {shape} (built for --max-batch "
                    f"{self.limits.max_batch}, --max-seq {self.limits.max_seq}): rebuild it with larger limits"
                )
        elif tuple(self.context.get_tensor_shape(name)) != shape:
            raise BackendError(
                f"the engine computes {name} as {tuple(self.context.get_tensor_shape(name))}, not {shape}: the engine "
                "and its genai_config.json disagree; rebuild the engine folder"
            )
        if not self.context.set_tensor_address(name, view.data_ptr()):
            raise BackendError(
                f"TensorRT refused the address of {name} (no such I/O tensor, or not 256-byte aligned; its log says "
                "which): rebuild the engine folder if its I/O names differ"
            )
