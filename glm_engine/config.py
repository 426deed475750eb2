"""The GLM model config: a validated dataclass with the reference's argument names, presets and ``config.json`` I/O.

Field names follow SwissArmyTransformer's model arguments (``--num-layers`` -> ``num_layers``), so a
``config.json`` written for the reference reads unchanged. Source: ``../shared/reference/glm130b.md`` section 1.1.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from glm_engine.errors import ConfigError
from glm_engine.vocab import VocabLayout

CONFIG_FILE_NAME = "config.json"

# How the fp16 rotary cos/sin table is built (glm130b.md section 1.5). "sat-0.2": inv_freq, positions and the
# product in fp16, as SwissArmyTransformer 0.2.12 that GLM-130B was released with; "sat-0.4": everything in fp32 and
# cast at the end, as SwissArmyTransformer 0.4.x. Only fp16 models are affected; bf16/fp32 always use fp32.
ROTARY_RECIPES = ("sat-0.2", "sat-0.4")


@dataclass(frozen=True)
class GLMConfig:
    """Shape and numerics of a GLM-130B-style model (DeepNorm, GeGLU, 1-D rotary, tied output embedding)."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    inner_hidden_size: int
    vocab_size: int
    max_sequence_length: int = 2048
    layernorm_epsilon: float = 1e-5
    rotary_base: float = 10000.0
    rotary_recipe: str = "sat-0.2"
    vocab_layout: VocabLayout = field(default_factory=VocabLayout)

    def __post_init__(self) -> None:
        for name in (
            "num_layers",
            "hidden_size",
            "num_attention_heads",
            "inner_hidden_size",
            "vocab_size",
            "max_sequence_length",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("layernorm_epsilon", "rotary_base"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{name} must be a number, got {value!r}")
        if not isinstance(self.vocab_layout, VocabLayout):
            raise ConfigError(f"vocab_layout must be a VocabLayout, got {type(self.vocab_layout).__name__}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size ({self.hidden_size})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"the head dimension ({self.head_dim}) must be even for rotary embeddings")
        if not (0 < self.layernorm_epsilon < 1):
            raise ConfigError(f"layernorm_epsilon must be in (0, 1), got {self.layernorm_epsilon}")
        if self.rotary_base <= 1:
            raise ConfigError(f"rotary_base must be > 1, got {self.rotary_base}")
        if self.rotary_recipe not in ROTARY_RECIPES:
            raise ConfigError(f"rotary_recipe must be one of {ROTARY_RECIPES}, got {self.rotary_recipe!r}")
        if self.vocab_layout.max_id() >= self.vocab_size:
            raise ConfigError(
                f"vocab_size ({self.vocab_size}) must exceed every special token id "
                f"(largest: {self.vocab_layout.max_id()})"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def deepnorm_alpha(self) -> float:
        """DeepNorm residual scale ``sqrt(2 * num_layers)`` (sqrt(140) for GLM-130B), a Python float as in SAT."""
        return (2 * self.num_layers) ** 0.5

    def num_parameters(self) -> int:
        """Parameter count from the shapes (embedding counted once: the output projection is tied)."""
        h, i = self.hidden_size, self.inner_hidden_size
        per_layer = (3 * h * h + 3 * h) + (h * h + h) + (2 * i * h + 2 * i) + (i * h + h) + 4 * h
        return self.vocab_size * h + self.num_layers * per_layer + 2 * h

    def valid_tp_degrees(self, limit: int = 64) -> list[int]:
        """Tensor-parallel degrees that split heads, vocab rows and GeGLU units evenly (glm130b.md section 1.11)."""
        return even_split_degrees((self.num_attention_heads, self.vocab_size, self.inner_hidden_size), limit)

    def with_overrides(self, **changes: Any) -> GLMConfig:
        return replace(self, **changes)

    # --- (de)serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["vocab_layout"] = self.vocab_layout.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> GLMConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown config keys {unknown}; known keys are {sorted(known)}")
        kwargs = dict(data)
        if "vocab_layout" in kwargs:
            kwargs["vocab_layout"] = VocabLayout.from_dict(kwargs["vocab_layout"])
        missing = [
            f.name
            for f in fields(cls)
            if f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING
        ]
        if missing:
            raise ConfigError(f"{source}: missing required config keys {missing}")
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | Path) -> GLMConfig:
        return cls.from_dict(read_json_object(path), source=str(path))

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def even_split_degrees(axes: tuple[int, ...], limit: int = 64) -> list[int]:
    """Tensor-parallel degrees up to ``limit`` that divide every one of ``axes`` (heads, vocab rows, FFN units)."""
    divisor = math.gcd(*axes)
    return [t for t in range(1, limit + 1) if divisor % t == 0]


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON object from a UTF-8 file, or a ConfigError that says what is wrong with the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


PRESETS: dict[str, GLMConfig] = {
    # GLM-130B as released (glm130b.md section 1.1).
    "glm-130b": GLMConfig(
        num_layers=70,
        hidden_size=12288,
        num_attention_heads=96,
        inner_hidden_size=32768,
        vocab_size=150528,
        max_sequence_length=2048,
    ),
    # A few layers with GLM-130B's vocabulary layout and special ids: for tests and the built-in default.
    "glm-tiny": GLMConfig(
        num_layers=4,
        hidden_size=64,
        num_attention_heads=4,
        inner_hidden_size=160,
        vocab_size=150528,
        max_sequence_length=2048,
    ),
}


def preset(name: str) -> GLMConfig:
    """Return the named preset config, or a ConfigError that lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown config preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
