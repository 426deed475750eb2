"""What ``--model`` names, and loading it for one bench point through the engine's own loader.

``--model`` takes what ``glm_engine.load`` takes (the built-in demo model by default, a checkpoint folder of any
family, an exported folder, a preset name such as ``glm-tiny``) plus ``random:<preset>`` (any family's preset:
``glm-130b``, ``chatglm-6b``, ``chatglm3-6b``, ``glm-4-9b``, ``glm-4-9b-chat-hf``, their ``-tiny`` ones ...) with
``--layers/--hidden/--heads/--kv-heads/--inner`` to shape random weights without files. Names are resolved by
:func:`glm_engine.engine.source.open_source`, and random models go through ``glm_engine.load`` like a preset does, so
``--quant``, TP sharding and every backend's weight preparation are the ones real checkpoints get; their weights are
drawn in fp16 (what real checkpoints store), which halves the host memory of large shapes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from glm_engine.backends.base import dtype_name, parse_dtype
from glm_engine.backends.registry import REGISTRY
from glm_engine.engine import DEFAULT_MODEL, load
from glm_engine.engine.source import open_source
from glm_engine.errors import ConfigError, InputError
from glm_engine.model.family import Family
from glm_engine.model.registry import preset_family, preset_names
from glm_engine.parallel.communicator import Communicator

from .roofline import cached_bytes_per_token
from .spec import QuantChoice

RANDOM_PREFIX = "random:"
RANDOM_DTYPE = torch.float16  # random weights are drawn in fp16, as real checkpoints store them
# Head room left to the rest of the machine when checking that random weights fit in host memory.
HOST_MEMORY_HEADROOM = 0.9


@dataclass(frozen=True)
class Shape:
    """``--layers/--hidden/--heads/--kv-heads/--inner`` for a random model (None keeps the preset's)."""

    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    inner: int | None = None
    kv_heads: int | None = None  # key/value groups of a grouped-query model

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and value < 1:  # 0 would read as "not given" below and keep the preset's size
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")

    def given(self) -> bool:
        return any(v is not None for v in asdict(self).values())


@dataclass
class LoadedModel:
    """A model loaded for bench points: its runner, bytes of weights a decode step reads, and the load notes."""

    runner: Any
    weight_bytes: int | None  # None for exported graphs: no GB/s
    notes: list[str]
    device_name: str
    kv_bytes_per_token: int | None = None  # keys and values of one cached token, per batch row (None: graphs)


@dataclass
class ModelSource:
    """A resolved ``--model``: its family, a description, its config, and what loads it."""

    name: str
    family: Family
    description: str
    config: Any  # the family's config
    random: bool = False
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None  # an export's own dtype, the default for every backend; None: each backend's first

    @property
    def max_sequence_length(self) -> int:
        return int(self.config.max_sequence_length)

    @property
    def text_ids(self) -> int:
        """Ids below this are plain text in every tokenizer the family uses (the first special id)."""
        return int(self.family.blank_tokens(self.config).text.stop)

    def config_dict(self) -> dict[str, Any]:
        data = self.family.config_to_dict(self.config)
        return {k: v for k, v in data.items() if not isinstance(v, dict)}

    def load(
        self,
        backend: str,
        dtype: str,
        quant: QuantChoice,
        tp: int = 1,
        communicator: Communicator | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> LoadedModel:
        """Load for one (backend, dtype, quantization, TP) group of points."""
        common: dict[str, Any] = dict(backend=backend, dtype=dtype, progress=progress, **quant.load_args())
        if self.random:
            check_random_fits(self.config, f"{RANDOM_PREFIX}{self.name}", dtype)
            common.update(random_dtype=RANDOM_DTYPE, max_random_parameters=self.config.num_parameters())
        engine = load(self.name, tp=tp, communicator=communicator, **common, **self.load_kwargs)
        notes = list(engine.notes)
        runner = engine.runner
        index = runner.device.index or 0
        devices = engine.backend.devices()
        device_name = devices[index].name if index < len(devices) else str(runner.device)
        weights = getattr(runner, "weights", None)  # an exported graph's weights (and cache) are not ours to count
        if weights is None:
            return LoadedModel(runner, None, notes, device_name)
        return LoadedModel(runner, streamed_bytes(weights), notes, device_name, kv_bytes_per_token(runner))


def kv_bytes_per_token(runner: Any) -> int:
    """Bytes of keys and values one cached token holds per batch row: every layer's K and V over the key/value heads
    this process holds (a TP rank's share of the groups of a grouped-query model, else of the heads), in the cache's
    dtype (the compute dtype), at the cache's head width (``config.head_dim``, which need not be hidden / heads)."""
    config = runner.config
    heads = getattr(runner, "local_kv_heads", None) or getattr(runner, "local_heads", config.num_attention_heads)
    return cached_bytes_per_token(config.num_layers, heads, config.head_dim, runner.dtype.itemsize)


def streamed_bytes(weights: Any) -> int:
    """Bytes a decode step reads (``ModelWeights.streamed_bytes``)."""
    return weights.streamed_bytes()


def _shaped(config: Any, shape: Shape, name: str) -> Any:
    """``config`` with ``shape``'s changes. With only ``--hidden`` the heads keep the preset's head width and the
    MLP its ratio; a grouped-query model keeps its key/value groups unless ``--kv-heads`` is given. A combination the
    family's config refuses is an InputError with its reason."""
    hidden = shape.hidden or config.hidden_size
    if shape.hidden and not shape.heads and hidden % config.head_dim:
        raise InputError(
            f"--hidden {hidden} is not a multiple of {name}'s head width {config.head_dim}; pass --heads as well"
        )
    heads = shape.heads or (hidden // config.head_dim if shape.hidden else config.num_attention_heads)
    inner = shape.inner or config.inner_hidden_size * hidden // config.hidden_size
    changes: dict[str, Any] = {
        "num_layers": shape.layers or config.num_layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "inner_hidden_size": inner,
        **_kv_groups(config, heads, shape.kv_heads, name),
    }
    try:
        return config.with_overrides(**changes)
    except ConfigError as exc:  # the family's own checks (heads that divide hidden, a rotary head width, ...)
        raise InputError(f"{name}: {exc}; change --heads, --kv-heads or --hidden") from None


def _kv_groups(config: Any, heads: int, kv_heads: int | None, name: str) -> dict[str, int]:
    """The ``num_kv_heads`` change of a grouped-query config (none for a config with a key/value head per query
    head, which refuses ``--kv-heads``): ``--kv-heads``, else the preset's groups when they still divide the heads."""
    if "num_kv_heads" not in {f.name for f in fields(config)}:
        if kv_heads is not None:
            raise InputError(
                f"--kv-heads shapes grouped-query models (random:chatglm2-6b, random:glm-4-9b, ...); {name} has one "
                "key/value head per query head"
            )
        return {}
    groups = kv_heads or config.num_kv_heads
    if heads % groups:
        given = f"--kv-heads {groups}" if kv_heads else f"{name}'s {groups} key/value groups"
        raise InputError(
            f"{given} must divide the {heads} attention heads; pass --kv-heads that divides {heads} or --heads "
            f"that is a multiple of {groups}"
        )
    return {"num_kv_heads": groups}


def _available_host_bytes() -> int | None:
    """Memory the system can give without swapping: MemAvailable (page cache counts as free), else free pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_random_fits(config: Any, name: str, dtype: str) -> None:
    """Refuse random weights that cannot fit in host memory (the fp16 draw, plus a copy in ``dtype`` unless that
    is fp16), before drawing them."""
    per_parameter = RANDOM_DTYPE.itemsize + (0 if dtype == "fp16" else parse_dtype(dtype).itemsize)
    need = config.num_parameters() * per_parameter
    available = _available_host_bytes()
    if available is not None and need > available * HOST_MEMORY_HEADROOM:
        raise InputError(
            f"{name}: {config.num_parameters() / 1e9:.1f}B random parameters in {dtype} need about "
            f"{need / 1e9:.0f} GB of host memory, {available / 1e9:.0f} GB are available; use fewer --layers or a "
            "smaller --hidden"
        )


def resolve_model(model: str | None, shape: Shape = Shape()) -> ModelSource:
    """Resolve ``--model`` (None: the built-in demo model) without loading weights."""
    name = model or DEFAULT_MODEL
    if name.startswith(RANDOM_PREFIX):
        preset_name = name[len(RANDOM_PREFIX) :]
        found = preset_family(preset_name)
        if found is None:
            known = ", ".join(RANDOM_PREFIX + n for n in preset_names())
            raise InputError(f"unknown random model {name!r}; choose from {known}")
        family, base = found
        config = _shaped(base, shape, name)
        check_random_fits(config, name, "fp16")  # the least it needs; each load checks its own dtype
        description = f"random {preset_name} ({_shape_words(config)}, {config.num_parameters() / 1e9:.2f}B parameters)"
        kwargs: dict[str, Any] = {"config": config}
        return ModelSource(preset_name, family, description, config, True, kwargs)
    if shape.given():
        raise InputError(
            "--layers/--hidden/--heads/--kv-heads/--inner shape random models: use --model random:<preset>"
        )
    source = open_source(name)
    description = f"{source.description} (random weights)" if source.random else source.description
    dtype = dtype_name(source.exported_dtype) if source.exported_dtype is not None else None
    return ModelSource(name, source.family, description, source.config, dtype=dtype)


def _shape_words(config: Any) -> str:
    """``2 layers, hidden 4096, 32 heads in 2 key/value groups of 128 dims`` (the groups only where the config has
    them)."""
    heads = f"{config.num_attention_heads} heads"
    groups = getattr(config, "num_kv_heads", config.num_attention_heads)
    if groups != config.num_attention_heads:
        heads += f" in {groups} key/value groups"
    return f"{config.num_layers} layers, hidden {config.hidden_size}, {heads} of {config.head_dim} dims"


def backend_device(backend: str) -> torch.device:
    """The device a backend's models run on (device 0), for the bandwidth measurement."""
    chosen, _ = REGISTRY.resolve(backend)
    device_fn = getattr(chosen, "device", None)
    return device_fn(0) if device_fn is not None else torch.device("cpu")


# When several backends run without --dtype: the first backend's default if all support it, else the first of these.
COMMON_DTYPE_PREFERENCE = ("fp16", "bf16", "fp32")


def common_dtype(supported: dict[str, list[str]]) -> str | None:
    """One dtype every backend in ``supported`` (backend -> its dtype names, default first) runs: the first
    backend's default when the others run it too, else fp16, bf16, fp32 in that order; None when none is common."""
    lists = list(supported.values())
    first_default = lists[0][:1] if lists else []
    for candidate in (*first_default, *COMMON_DTYPE_PREFERENCE):
        if all(candidate in names for names in lists):
            return candidate
    return None


def supported_dtype_names(backend: str) -> list[str]:
    """The dtypes ``backend`` computes in, its default first."""
    chosen, _ = REGISTRY.resolve(backend)
    return [dtype_name(d) for d in chosen.supported_dtypes()]


def dtype_or_default(backend: str, dtype: str | None) -> str:
    """``dtype``, or the backend's first choice when None."""
    if dtype:
        return dtype
    chosen, _ = REGISTRY.resolve(backend)
    return dtype_name(chosen.default_dtype())
