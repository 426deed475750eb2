"""What every backend declares: availability with a reason, capabilities per op/dtype/format, and how it runs.

Two kinds share one surface. Op-level backends (cpu, cuda, rocm_dcu, ascend) hand the device-agnostic GLM graph an
:class:`~glm_engine.ops.interface.OpTable`; graph-level backends (tensorrt, onnxruntime) run an exported graph and
hand the engine a :class:`ModelRunner` directly. Vendor SDKs are imported inside the methods, never at module level.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch

from glm_engine.errors import InputError
from glm_engine.ops.interface import Op, OpTable
from glm_engine.quant.formats import QuantFormat, parse_quant_format

if TYPE_CHECKING:
    from glm_engine.model.kv_cache import KVCache
    from glm_engine.ops.interface import DecodeStepper, ModelConfig


@dataclass(frozen=True)
class Verdict:
    """A yes/no answer with the reason a user can act on (or a note on how a yes is served)."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class DeviceInfo:
    """One device a backend can run on, as shown by ``glm-engine backends``."""

    index: int
    name: str
    total_memory_bytes: int | None = None
    detail: str = ""
    free_memory_bytes: int | None = None  # at the time of asking; None when the backend cannot tell
    capability: str = ""  # architecture as the vendor names it: "sm_90", "gfx90a", an Ascend SoC


class BackendKind(str, Enum):
    OP_LEVEL = "op-level"
    GRAPH_LEVEL = "graph-level"


@dataclass(frozen=True)
class RunnerCapabilities:
    """What a loaded model can do, declared by its runner so callers never probe it with ``hasattr``."""

    kv_cache: bool = True  # ``new_cache`` and ``forward(cache=...)``
    tensor_parallel: int = 1  # ranks the model is split over (1: one process holds it all)
    op_level: bool = False  # glm-engine's own graph over an OpTable; False: an exported graph (ONNX, TensorRT)


class ModelRunner(Protocol):
    """What the generator needs from a loaded model, whichever kind of backend runs it."""

    config: ModelConfig
    device: torch.device
    dtype: torch.dtype
    capabilities: RunnerCapabilities

    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        """A preallocated KV cache for ``batch_size`` rows of up to ``max_length`` tokens."""

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        blocked: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits ``[b, s, vocab]`` (only the last position with ``last_only``); a cache gets the new keys/values."""

    def decode_stepper(self, steps: int | None = None, requested: bool | None = None) -> DecodeStepper:
        """What runs the cached one-token steps of a decode of ``steps`` steps: plain ``forward`` calls, or device
        graphs where the backend offers them (``requested`` False refuses them, None leaves it to the defaults)."""


DTYPE_NAMES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# The usual other spellings of the three names (torch's and numpy's, any case).
DTYPE_ALIASES = {
    "float32": "fp32", "float": "fp32", "torch.float32": "fp32",
    "bfloat16": "bf16", "torch.bfloat16": "bf16",
    "float16": "fp16", "half": "fp16", "torch.float16": "fp16",
}  # fmt: skip


def parse_dtype(name: str) -> torch.dtype:
    """The torch dtype for a dtype name (fp32, bf16, fp16, or a usual spelling such as float16), or an InputError
    listing the names."""
    key = str(name).strip().lower()
    key = DTYPE_ALIASES.get(key, key)
    if key not in DTYPE_NAMES:
        raise InputError(
            f"unknown dtype {name!r}; choose one of {', '.join(DTYPE_NAMES)} (or float32, bfloat16, float16)"
        )
    return DTYPE_NAMES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPE_NAMES.items()}.get(dtype, str(dtype))


class Backend(ABC):
    """A way to run GLM on one family of devices."""

    name: ClassVar[str]
    kind: ClassVar[BackendKind]
    device_type: ClassVar[str]  # torch device type of its tensors ("cpu", "cuda", "npu")
    dist_backend: ClassVar[str]  # torch.distributed backend for tensor parallelism
    priority: ClassVar[int] = 0  # higher wins in ``--backend auto`` among available backends
    description: ClassVar[str] = ""

    @abstractmethod
    def availability(self) -> Verdict:
        """Whether this backend can run here; if not, why, in words a user can act on. Must not raise."""

    def devices(self) -> list[DeviceInfo]:
        """Devices found (empty when unavailable)."""
        return []

    def device_count(self) -> int:
        """How many devices this process sees, counted without touching any: what a launcher and each rank compare
        the ranks per node with. Backends whose :meth:`devices` creates device contexts override it."""
        return len(self.devices())

    @abstractmethod
    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        """Compute dtypes this backend runs, best first (the first is the default)."""

    def quant_formats(self) -> tuple[QuantFormat, ...]:
        """Weight quantization formats this backend runs natively."""
        return ()

    def implemented_ops(self) -> frozenset[Op]:
        return frozenset(Op)

    def supports(self, op: Op, dtype: torch.dtype, quant_format: QuantFormat | str | None = None) -> Verdict:
        """Whether ``op`` runs in ``dtype`` (with weights in ``quant_format``), with a reason either way."""
        if op not in self.implemented_ops():
            return Verdict(False, f"{self.name} has no implementation of {op.value}")
        if dtype not in self.supported_dtypes():
            names = ", ".join(dtype_name(d) for d in self.supported_dtypes())
            return Verdict(False, f"{self.name} does not compute in {dtype_name(dtype)}; it supports {names}")
        if quant_format is not None:
            try:
                quant_format = parse_quant_format(quant_format)
            except InputError as exc:
                return Verdict(False, str(exc))
            if quant_format not in self.quant_formats():
                have = ", ".join(f.value for f in self.quant_formats()) or "none"
                return Verdict(False, f"{self.name} has no kernels for {quant_format.value} weights (formats: {have})")
        return Verdict(True, self.support_note(op, dtype, quant_format))

    def support_note(self, op: Op, dtype: torch.dtype, quant_format: QuantFormat | None) -> str:
        """How a supported combination is served when that is worth knowing (e.g. computed in fp32)."""
        return ""

    def default_dtype(self) -> torch.dtype:
        return self.supported_dtypes()[0]


class OpLevelBackend(Backend):
    """Runs glm-engine's own GLM graph with device-specific op implementations."""

    kind = BackendKind.OP_LEVEL

    def quant_formats(self) -> tuple[QuantFormat, ...]:
        """Every format: at worst an op table dequantizes the stored weight for each product (the portable path,
        ``ops.torch_ops.DequantizingLinear``); backends with fused kernels say which formats those cover."""
        return tuple(QuantFormat)

    def support_note(self, op: Op, dtype: torch.dtype, quant_format: QuantFormat | None) -> str:
        if op is Op.LINEAR and quant_format is not None:
            return "portable path: the stored weight is dequantized for each product"
        return ""

    def device(self, index: int = 0) -> torch.device:
        return torch.device(self.device_type, index) if self.device_type != "cpu" else torch.device("cpu")

    @abstractmethod
    def op_table(self, dtype: torch.dtype, device_index: int = 0) -> OpTable:
        """The op implementations for ``dtype`` on device ``device_index``."""


class GraphLevelBackend(Backend):
    """Runs a whole exported graph (ONNX, TensorRT engine) behind the same runner interface."""

    kind = BackendKind.GRAPH_LEVEL

    @abstractmethod
    def load_runner(self, artifact: str, dtype: torch.dtype | None = None, **options: object) -> ModelRunner:
        """Open an exported model (a folder or engine file made by ``glm-engine export``); ``dtype`` None means the
        export's own; ``options`` are the backend's (e.g. onnxruntime's ``provider``)."""
