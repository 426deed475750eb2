"""``TensorRTDouble``: a CPU stand-in of the parts of the ``tensorrt`` module the engine session calls, so its binding
logic (one context, profile switches, addresses, the KV cache bound in place) is tested without TensorRT or a GPU.

It follows TensorRT 10's documented rules for what it implements: an engine comes from a ``Runtime`` that must stay
alive while the engine is used (checked through a weak reference); a context made with the ``USER_MANAGED`` allocation
strategy runs only once ``set_device_memory`` gave it 256-byte aligned memory at least as large as the selected
profile needs (the double scribbles over that much of it on every call, so memory shared with an I/O buffer shows as
wrong data); ``set_optimization_profile_async`` must precede ``set_input_shape`` (a switch forgets the shapes); an
input shape must lie within the selected profile's min/max; every I/O tensor needs an address, 256-byte aligned
(``setTensorAddress``: "The pointer must have at least 256-byte alignment"), before ``execute_async_v3``; output shapes
follow from the input shapes; and no output may overlap an input (the engine reads its inputs while it writes its
outputs). Like the real calls, a refused call returns False (and says why in ``errors``) instead of raising. Like a
real engine it reads its inputs from, and writes its outputs to, the raw addresses it was given (through ctypes), so a
wrong address, shape or layout shows up as wrong data. ``TensorRTDouble(..., version="10.0.1")`` has TensorRT 10.0's
memory API (``get_device_memory_size_for_profile`` and the ``device_memory`` property, no ``set_device_memory``).

The "network" it runs is a stand-in with the exported graph's I/O contract, not GLM: each layer's new key/value at a
position is ``token + 100 * layer + 10 * kind + position / 1000`` on every head and channel, ``present`` is
``Concat(past, new)`` along the positions, and the logits of a kept position are zero except the sum of layer 0's
keys up to that position in column 0 and a 1 at column ``(token + 1) % vocab``. Nothing here says anything about what
TensorRT computes.
"""

from __future__ import annotations

import ctypes
import math
import weakref
from types import SimpleNamespace

import torch

from glm_engine.backends.tensorrt.plan import GraphIO, Profile
from glm_engine.exported.names import KV_KINDS, PAST_NAMES, PRESENT_NAMES

ALIGN = 256  # setTensorAddress and set_device_memory: 256-byte aligned addresses
DTYPES = {
    "input_ids": torch.int64,
    "position_ids": torch.int64,
    "attention_mask": torch.bool,
    "logits_to_keep": torch.int64,
}
STRATEGIES = SimpleNamespace(STATIC="STATIC", ON_PROFILE_CHANGE="ON_PROFILE_CHANGE", USER_MANAGED="USER_MANAGED")


def at(address: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The memory at ``address`` as a tensor of ``shape`` (a view: writes go to that memory)."""
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer((ctypes.c_char * nbytes).from_address(address), dtype=dtype).view(shape)


def new_kv(tokens: torch.Tensor, positions: torch.Tensor, layer: int, kind: int, heads: int, dim: int) -> torch.Tensor:
    """The stand-in network's new keys (``kind`` 0) or values (1) ``[b, heads, s, dim]`` for ``tokens [b, s]``."""
    value = tokens.double() + 100 * layer + 10 * kind + positions.double() / 1000
    return value[:, None, :, None].expand(-1, heads, -1, dim).float()


class FakeContext:
    def __init__(self, engine: FakeEngine, strategy: str) -> None:
        self.engine, self.strategy = engine, strategy
        self.profile = 0  # "The newly created execution context will be assigned optimization profile 0."
        self.profile_calls: list[int] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.memory: tuple[int, int] | None = None  # (address, size) given with set_device_memory
        self.bound: list[dict[str, int]] = []  # the addresses of each executed call
        self.errors: list[str] = []  # what TensorRT would have logged for each refused call

    def refuse(self, why: str) -> bool:
        self.errors.append(why)
        return False

    def set_device_memory(self, address: int, size: int) -> None:
        """``setDeviceMemoryV2``: returns nothing; a misaligned address is reported and not taken."""
        if address % ALIGN:
            self.refuse(f"device memory at {address:#x} is not {ALIGN}-byte aligned")
            return
        self.memory = (address, size)

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        if not 0 <= index < len(self.engine.profiles):
            return False
        self.profile, self.shapes = index, {}  # the shapes are set again after a switch
        self.profile_calls.append(index)
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        low, _, high = self.engine.profiles[self.profile].shapes[name]
        if len(shape) != len(low) or any(not lo <= d <= hi for lo, d, hi in zip(low, shape, high, strict=True)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        io = self.engine.io
        b, s = self.shapes["input_ids"]
        if name == "logits":
            kept = self.shapes["logits_to_keep"][0] if io.keeps_logits else s
            return (b, kept, io.vocab_size)
        past = self.shapes[PAST_NAMES["key"] % 0][2]
        return (b, io.num_kv_heads, past + s, io.head_size)

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name not in self.engine.names:
            return self.refuse(f"no I/O tensor named {name}")
        if address % ALIGN:
            return self.refuse(f"{name} at {address:#x} is not {ALIGN}-byte aligned")
        self.addresses[name] = address
        return True

    def nbytes(self, name: str) -> int:
        dtype = DTYPES.get(name, torch.float32)
        shape = self.shapes[name] if name in self.shapes else self.get_tensor_shape(name)
        return math.prod(shape) * torch.empty(0, dtype=dtype).element_size()

    def check_call(self) -> str | None:
        """Why ``execute_async_v3`` would fail now, or None."""
        engine = self.engine
        if set(self.shapes) != {n for n in engine.names if n in engine.profiles[0].shapes}:
            return "an input has no shape"
        if set(self.addresses) != engine.names:
            return f"no address for {sorted(engine.names - set(self.addresses))}"
        needed = engine.memory_sizes[self.profile]
        if self.strategy == STRATEGIES.USER_MANAGED and (self.memory is None or self.memory[1] < needed):
            return f"profile {self.profile} needs {needed} bytes of device memory, got {self.memory}"
        inputs = [(self.addresses[n], self.nbytes(n)) for n in self.shapes]
        for name in engine.names - set(self.shapes):
            start, end = self.addresses[name], self.addresses[name] + self.nbytes(name)
            if any(start < a + n and a < end for a, n in inputs if n):
                return f"output {name} overlaps an input"
        return None

    def execute_async_v3(self, stream: int) -> bool:
        engine = self.engine
        assert engine.runtime() is not None, "the Runtime that made this engine was destroyed before it"
        io = engine.io
        why = self.check_call()
        if why is not None:
            return self.refuse(why)
        self.bound.append(dict(self.addresses))
        if self.memory is not None:  # the layers' scratch: whatever was there is overwritten
            at(self.memory[0], (engine.memory_sizes[self.profile],), torch.uint8).fill_(0xAB)
        ids = at(self.addresses["input_ids"], self.shapes["input_ids"], torch.int64).clone()
        positions = at(self.addresses["position_ids"], self.shapes["position_ids"], torch.int64).clone()
        b, s = ids.shape
        keep = at(self.addresses["logits_to_keep"], self.shapes["logits_to_keep"], torch.int64).clone()
        key0 = None
        for layer in range(io.num_layers):
            for kind, label in enumerate(KV_KINDS):
                past_name = PAST_NAMES[label] % layer
                past = at(self.addresses[past_name], self.shapes[past_name], torch.float32).clone()
                present = torch.cat([past, new_kv(ids, positions, layer, kind, io.num_kv_heads, io.head_size)], 2)
                name = PRESENT_NAMES[label] % layer
                at(self.addresses[name], self.get_tensor_shape(name), torch.float32).copy_(present)
                if layer == 0 and kind == 0:
                    key0 = present
        logits = torch.zeros(b, keep.numel(), io.vocab_size)
        for j, position in enumerate(keep.tolist()):
            last = key0.shape[2] - s + position  # the key of this position in present
            logits[:, j, 0] = key0[:, 0, : last + 1, 0].sum(-1)
            logits[torch.arange(b), j, (ids[:, position] + 1) % io.vocab_size] = 1.0
        at(self.addresses["logits"], self.get_tensor_shape("logits"), torch.float32).copy_(logits)
        return True


class FakeEngine:
    def __init__(self, runtime: FakeRuntime, io: GraphIO, profiles: list[Profile], memory_sizes: list[int]) -> None:
        self.runtime = weakref.ref(runtime)  # the real engine needs its runtime: tests see if it was kept
        self.io, self.profiles, self.memory_sizes = io, profiles, memory_sizes
        self.num_optimization_profiles = len(profiles)
        self.names = {
            *profiles[0].shapes,
            "logits",
            *(PRESENT_NAMES[k] % i for i in range(io.num_layers) for k in KV_KINDS),
        }
        self.contexts: list[FakeContext] = []

    def get_device_memory_size_for_profile_v2(self, index: int) -> int:
        return self.memory_sizes[index]

    def create_execution_context(self, strategy: str = STRATEGIES.STATIC) -> FakeContext:
        self.contexts.append(FakeContext(self, strategy))
        return self.contexts[-1]


class LegacyContext(FakeContext):
    """TensorRT 10.0's context: device memory through the ``device_memory`` property only."""

    set_device_memory = property()  # absent, as in 10.0

    @property
    def device_memory(self) -> int | None:
        return None if self.memory is None else self.memory[0]

    @device_memory.setter
    def device_memory(self, address: int) -> None:  # 10.0 takes no size: the engine's own is assumed
        if address % ALIGN:
            self.refuse(f"device memory at {address:#x} is not {ALIGN}-byte aligned")
            return
        self.memory = (address, max(self.engine.memory_sizes))


class LegacyEngine(FakeEngine):
    """TensorRT 10.0's engine: ``get_device_memory_size_for_profile`` without the ``_v2``."""

    get_device_memory_size_for_profile_v2 = property()  # absent, as in 10.0

    def get_device_memory_size_for_profile(self, index: int) -> int:
        return self.memory_sizes[index]

    def create_execution_context(self, strategy: str = STRATEGIES.STATIC) -> FakeContext:
        self.contexts.append(LegacyContext(self, strategy))
        return self.contexts[-1]


class FakeRuntime:
    def __init__(self, logger: object, double: TensorRTDouble) -> None:
        self.logger, self.double = logger, double

    def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
        if data != self.double.engine_bytes:
            return None  # "None if it could not be deserialized"
        double = self.double
        kind = LegacyEngine if double.__version__.startswith("10.0.") else FakeEngine
        double.engines.append(kind(self, double.io, double.profiles, double.memory_sizes))
        return self.double.engines[-1]


class TensorRTDouble(SimpleNamespace):
    """The ``tensorrt`` module as the session uses it; ``engines`` lists the engines it deserialized."""

    def __init__(
        self,
        io: GraphIO,
        profiles: list[Profile],
        version: str = "10.3.0",
        memory_sizes: tuple[int, ...] = (8192, 2048),
    ) -> None:
        super().__init__(__version__=version)
        self.io, self.profiles, self.memory_sizes = io, profiles, list(memory_sizes)  # activation bytes per profile
        self.ExecutionContextAllocationStrategy = STRATEGIES
        self.engine_bytes = b"engine"
        self.engines: list[FakeEngine] = []
        self.Logger = FakeLogger
        self.Runtime = lambda logger: FakeRuntime(logger, self)


class FakeLogger:
    """``trt.Logger(trt.Logger.WARNING)``."""

    WARNING = "warning"

    def __init__(self, severity: str) -> None:
        self.severity = severity
