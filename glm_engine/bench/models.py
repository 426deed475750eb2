"""What ``--model`` names, and loading it for one bench point through the engine's own loaders.

``--model`` takes what ``glm-engine run`` takes (the built-in demo model by default, a native/SAT checkpoint folder,
a preset name such as ``glm-tiny``) plus Hugging Face ChatGLM-6B folders and ``random:<preset>`` (``glm-130b``,
``glm-tiny``, ``chatglm-6b``, ``chatglm-tiny``) with ``--layers/--hidden/--heads/--inner`` to shape random weights
without files. Random models go through ``glm_engine.load`` / ``load_chatglm`` like a preset does, so ``--quant``,
TP sharding and every backend's weight preparation are the ones real checkpoints get; their weights are drawn in
fp16 (what real checkpoints store), which halves the host memory of large shapes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from glm_engine.backends.base import dtype_name, parse_dtype
from glm_engine.backends.registry import REGISTRY
from glm_engine.chatglm_engine import load_chatglm
from glm_engine.checkpoint.hf import is_chatglm_checkpoint, read_chatglm_config
from glm_engine.config import PRESETS
from glm_engine.engine import DEFAULT_MODEL, load, peek_config
from glm_engine.errors import InputError, ParallelError
from glm_engine.exported import GENAI_CONFIG_FILE, read_exported
from glm_engine.model.chatglm_config import CHATGLM_PRESETS
from glm_engine.parallel.communicator import Communicator

from .spec import QuantChoice
from .workload import Family

RANDOM_PREFIX = "random:"
RANDOM_DTYPE = torch.float16  # random weights are drawn in fp16, as real checkpoints store them
# Head room left to the rest of the machine when checking that random weights fit in host memory.
HOST_MEMORY_HEADROOM = 0.9


@dataclass(frozen=True)
class Shape:
    """``--layers/--hidden/--heads/--inner`` for a random model (None keeps the preset's)."""

    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    inner: int | None = None

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
    config: Any  # GLMConfig or ChatGLMConfig
    random: bool = False
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None  # an export's own dtype, the default for every backend; None: each backend's first

    @property
    def max_sequence_length(self) -> int:
        return int(self.config.max_sequence_length)

    @property
    def text_ids(self) -> int:
        """Ids below this are plain text in every tokenizer the family uses (the first special id)."""
        if self.family is Family.CHATGLM:
            return int(self.config.mask_token_id)
        return int(min(self.config.vocab_layout.mask, self.config.vocab_size))

    def config_dict(self) -> dict[str, Any]:
        data = self.config.to_dict() if hasattr(self.config, "to_dict") else self.config.to_hf_dict()
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
        if self.family is Family.CHATGLM:
            if tp != 1:
                raise ParallelError(f"{self.description}: ChatGLM-6B runs at TP=1 in glm-engine; drop --tp {tp}")
            engine = load_chatglm(self.name, **common, **self.load_kwargs)
        else:
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
    """Bytes of keys and values one cached token holds per batch row: every layer's K and V over the heads this
    process holds (a TP rank's share), in the cache's dtype (the compute dtype)."""
    config = runner.config
    heads = getattr(runner, "local_heads", config.num_attention_heads)
    return 2 * config.num_layers * heads * config.head_dim * runner.dtype.itemsize


def streamed_bytes(weights: Any) -> int:
    """Bytes a decode step reads: every weight in its runtime form (quantized linears packed), except an embedding
    table that is not also the output projection, of which a step reads one row per token (ChatGLM's, with its
    separate ``lm_head``; GLM's when ``quant_output`` gives the logits a quantized copy)."""
    total = weights.nbytes()
    separate_output = getattr(weights, "output_projection", None) is not None or hasattr(weights, "lm_head")
    if separate_output:
        total -= weights.word_embeddings.numel() * weights.word_embeddings.element_size()
    return total


def _shaped(config: Any, shape: Shape, family: Family) -> Any:
    """``config`` with ``shape``'s changes; heads follow the preset's head width and the MLP its ratio when only
    ``--hidden`` is given."""
    hidden = shape.hidden or config.hidden_size
    heads = shape.heads or (hidden // config.head_dim if shape.hidden else config.num_attention_heads)
    inner = shape.inner or config.inner_hidden_size * hidden // config.hidden_size
    if hidden % heads:
        raise InputError(f"--heads {heads} does not divide --hidden {hidden}; pass --heads")
    step = 4 if family is Family.CHATGLM else 2
    if (hidden // heads) % step:
        raise InputError(f"head width {hidden // heads} must be a multiple of {step} for rotary; change --heads")
    return config.with_overrides(
        num_layers=shape.layers or config.num_layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        inner_hidden_size=inner,
    )


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
        if preset_name in CHATGLM_PRESETS:
            family, base = Family.CHATGLM, CHATGLM_PRESETS[preset_name]
        elif preset_name in PRESETS:
            family, base = Family.GLM, PRESETS[preset_name]
        else:
            known = ", ".join(RANDOM_PREFIX + n for n in (*PRESETS, *CHATGLM_PRESETS))
            raise InputError(f"unknown random model {name!r}; choose from {known}")
        config = _shaped(base, shape, family)
        check_random_fits(config, name, "fp16")  # the least it needs; each load checks its own dtype
        description = (
            f"random {preset_name} ({config.num_layers} layers, hidden {config.hidden_size}, "
            f"{config.num_parameters() / 1e9:.2f}B parameters)"
        )
        kwargs: dict[str, Any] = {"config": config}
        return ModelSource(preset_name, family, description, config, True, kwargs)
    if shape.given():
        raise InputError("--layers/--hidden/--heads/--inner shape random models: use --model random:<preset>")
    if name in CHATGLM_PRESETS and not Path(name).exists():
        return ModelSource(name, Family.CHATGLM, f"preset {name} (random weights)", CHATGLM_PRESETS[name])
    if (Path(name) / GENAI_CONFIG_FILE).is_file():
        info = read_exported(name)
        return ModelSource(name, Family.GLM, f"exported model {name}", info.config, dtype=dtype_name(info.dtype))
    if is_chatglm_checkpoint(Path(name)):
        config = read_chatglm_config(Path(name))
        return ModelSource(name, Family.CHATGLM, f"ChatGLM checkpoint {name}", config)
    config = peek_config(name)
    description = (
        "the built-in demo model"
        if name == DEFAULT_MODEL
        else (
            f"preset {name} (random weights)" if name in PRESETS and not Path(name).exists() else f"checkpoint {name}"
        )
    )
    return ModelSource(name, Family.GLM, description, config)


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
