"""Everything about a TensorRT engine that can be decided without TensorRT: optimization profiles from the user's
limits, the engine cache key, and how each I/O tensor is bound. Pure Python, so it is tested where TensorRT is not
installed (docs/export.md#tensorrt-engines); ``build.py`` and ``runner.py`` only execute these plans.

Profiles (docs/export.md#tensorrt-engines): the exported graph serves prefill (``seq`` tokens, empty past) and decode
(one token, ``past`` cached), whose shapes are far apart, so two profiles are planned and the runner picks one per
call: ``prefill`` with ``sequence_length`` in ``[1, opt_seq, max_seq]`` and ``past`` 0, and ``decode`` with one token
and ``past`` in ``[0, opt_seq, max_seq - 1]``. Every dynamic input gets its ``(min, opt, max)`` in both;
``logits_to_keep`` (exports of format version 2) is tuned for one position (generation) and allows up to
``sequence_length`` (scoring every position).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from glm_engine.errors import InputError
from glm_engine.exported.names import FILES_SECTION, TENSORRT_SECTION, past_names, present_names

Shape = tuple[int, ...]
PREFILL, DECODE = "prefill", "decode"
# Key schema version: bump when anything that changes the built engine but is not in the key is changed.
CACHE_KEY_VERSION = 2  # 2: the GPU's identity and the workspace joined the key


@dataclass(frozen=True)
class Limits:
    """What the engine must serve: rows per call, tokens per sequence (prompt + generated), the size to tune for."""

    max_batch: int
    max_seq: int
    opt_seq: int
    opt_batch: int = 1

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_seq < 2:
            raise InputError(f"--max-batch must be >= 1 and --max-seq >= 2, got {self.max_batch} and {self.max_seq}")
        if not 1 <= self.opt_seq <= self.max_seq:
            raise InputError(f"--opt-seq must lie in [1, --max-seq={self.max_seq}], got {self.opt_seq}")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise InputError(f"the batch to tune for must lie in [1, {self.max_batch}], got {self.opt_batch}")


@dataclass(frozen=True)
class GraphIO:
    """The exported graph's I/O as ``genai_config.json`` describes it."""

    num_layers: int
    num_kv_heads: int
    head_size: int
    vocab_size: int
    context_length: int  # positions the graph's rotary tables cover
    position_rows: int  # 1 for GLM-130B (``[b, s]``), 2 for ChatGLM-6B (``[b, 2, s]``)
    dtype: str
    keeps_logits: bool = False  # the graph takes ``logits_to_keep`` (format version 2)

    @classmethod
    def from_genai_config(cls, description: dict[str, Any]) -> GraphIO:
        model = description["model"]
        decoder = model["decoder"]
        rows = 2 if len(decoder["shapes"]["position_ids"]) == 3 else 1
        return cls(
            int(decoder["num_hidden_layers"]),
            int(decoder["num_key_value_heads"]),
            int(decoder["head_size"]),
            int(model["vocab_size"]),
            int(model["context_length"]),
            rows,
            decoder["dtype"],
            "logits_to_keep" in decoder["input_order"],
        )

    def kv_names(self) -> list[str]:
        return past_names(self.num_layers)


@dataclass(frozen=True)
class Profile:
    """One optimization profile: ``{input name: (min, opt, max)}``."""

    name: str
    shapes: dict[str, tuple[Shape, Shape, Shape]]


def _input_shapes(io: GraphIO, batch: int, seq: int, past: int, keep: int) -> dict[str, Shape]:
    positions = (batch, seq) if io.position_rows == 1 else (batch, io.position_rows, seq)
    shapes = {"input_ids": (batch, seq), "position_ids": positions, "attention_mask": (batch, 1, seq, past + seq)}
    if io.keeps_logits:
        shapes["logits_to_keep"] = (keep,)
    shapes.update({name: (batch, io.num_kv_heads, past, io.head_size) for name in io.kv_names()})
    return shapes


def plan_profiles(io: GraphIO, limits: Limits) -> list[Profile]:
    """The prefill and decode profiles (see the module docstring), checked against the graph's position range."""
    if limits.max_seq > io.context_length:
        raise InputError(
            f"--max-seq {limits.max_seq} exceeds the {io.context_length} positions the ONNX graph was exported for; "
            "re-export with a larger --max-seq or build for fewer"
        )
    b, s = limits, limits.max_seq
    profiles = []
    for name, (lo, opt, hi) in (
        (PREFILL, ((1, 1, 0, 1), (b.opt_batch, b.opt_seq, 0, 1), (b.max_batch, s, 0, s))),
        (DECODE, ((1, 1, 0, 1), (b.opt_batch, 1, b.opt_seq, 1), (b.max_batch, 1, s - 1, 1))),
    ):
        low, mid, high = (_input_shapes(io, *dims) for dims in (lo, opt, hi))
        profiles.append(Profile(name, {key: (low[key], mid[key], high[key]) for key in low}))
    return profiles


def profile_for(past: int, seq: int) -> str:
    """Which profile serves a call with ``past`` cached and ``seq`` new tokens."""
    if past == 0:
        return PREFILL
    if seq == 1:
        return DECODE
    raise InputError(
        f"the TensorRT engine takes either a prompt on an empty cache or one token after it, not {seq} tokens after "
        f"{past} cached"
    )


def check_call(limits: Limits, batch: int, past: int, seq: int) -> None:
    """An InputError when a call needs more than the engine's profiles cover (TensorRT would refuse the shapes, or
    the preallocated buffers would be overrun)."""
    if batch > limits.max_batch:
        raise InputError(
            f"the TensorRT engine was built for at most {limits.max_batch} rows per call, got {batch}: rebuild it "
            "with a larger --max-batch"
        )
    if past + seq > limits.max_seq:
        raise InputError(
            f"the TensorRT engine was built for at most {limits.max_seq} tokens per row, this call reaches "
            f"{past + seq} ({past} cached + {seq} new): rebuild it with a larger --max-seq"
        )


@dataclass(frozen=True)
class GpuIdentity:
    """What an engine's tactics were timed and chosen on: TensorRT picks kernels per GPU model, SM count and memory,
    so an engine from an A100 40GB is not the best (or may not load) on an A100 80GB or a partitioned (MIG) device."""

    name: str
    compute_capability: str  # "sm_90"
    sm_count: int
    total_memory: int  # bytes


def cache_key(
    model_sha256: str,
    graph_sha256: str,
    trt_version: str,
    gpu: GpuIdentity,
    profiles: list[Profile],
    workspace_bytes: int,
) -> str:
    """The engine cache key: the exported weights and graph, TensorRT's version, the GPU (name, compute capability,
    SM count, memory), the profiles and the workspace limit (it bounds which tactics the builder may choose)."""
    payload = {
        "version": CACHE_KEY_VERSION,
        "weights": model_sha256,
        "graph": graph_sha256,
        "tensorrt": trt_version,
        "gpu": asdict(gpu),
        "profiles": [asdict(p) for p in profiles],
        "workspace_bytes": workspace_bytes,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Binding:
    """How one engine I/O tensor is bound: its name, whether the engine reads or writes it, its role, the element
    count of its largest shape under the limits, and whether it is bound to the KV cache itself (``past``/``present``:
    the halves of ``TrtKVCache``) rather than to a buffer of the runner's own."""

    name: str
    is_input: bool
    role: str  # "input_ids" | "position_ids" | "attention_mask" | "logits_to_keep" | "past" | "present" | "logits"
    capacity: int
    in_cache: bool = False

    @property
    def buffered(self) -> bool:
        """Whether the runner allocates a buffer of ``capacity`` elements for it, once, at open."""
        return not self.in_cache


def binding_plan(io: GraphIO, limits: Limits) -> list[Binding]:
    """Every I/O tensor, sized once for ``limits``: the inputs and the logits get one runner buffer each, bound as
    views every call, so nothing is allocated while decoding; the KV tensors are bound straight to the KV cache
    (``kv_cache.TrtKVCache``), which makes the engine's past and present the cache's own memory."""
    b, s, h, d = limits.max_batch, limits.max_seq, io.num_kv_heads, io.head_size
    kv = b * h * s * d
    plan = [
        Binding("input_ids", True, "input_ids", b * s),
        Binding("position_ids", True, "position_ids", b * io.position_rows * s),
        Binding("attention_mask", True, "attention_mask", b * s * s),
    ]
    if io.keeps_logits:
        plan.append(Binding("logits_to_keep", True, "logits_to_keep", s))
    plan += [Binding(name, True, "past", kv, in_cache=True) for name in io.kv_names()]
    plan.append(Binding("logits", False, "logits", b * s * io.vocab_size))
    plan += [Binding(name, False, "present", kv, in_cache=True) for name in present_names(io.num_layers)]
    return plan


def buffered_elements(plan: list[Binding]) -> int:
    """Elements the runner preallocates for ``plan`` (the KV cache's own halves come with each cache)."""
    return sum(b.capacity for b in plan if b.buffered)


def engine_metadata(description: dict[str, Any], key: str, profiles: list[Profile], limits: Limits) -> dict[str, Any]:
    """The JSON written next to an engine: the export's description plus what the engine was built for, less the
    ONNX folder's ``files`` (``build.py`` lists the engine folder's own)."""
    return {
        **{name: value for name, value in description.items() if name != FILES_SECTION},
        TENSORRT_SECTION: {
            "cache_key": key,
            "limits": asdict(limits),
            "profiles": [p.name for p in profiles],
        },
    }
