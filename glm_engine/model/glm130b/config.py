"""The GLM model config: a validated dataclass with the reference's argument names, presets and ``config.json`` I/O.

Field names follow SwissArmyTransformer's model arguments (``--num-layers`` -> ``num_layers``), so a
``config.json`` written for the reference reads unchanged (``docs/glm-semantics.md``).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from glm_engine.errors import ConfigError
from glm_engine.model.config_checks import (
    CONFIG_FILE_NAME,
    DecoderConfig,
    heads_divide_hidden,
    number,
    positive_int,
    read_json_object,
)
from glm_engine.model.glm130b.vocab import VocabLayout

__all__ = ["CONFIG_FILE_NAME", "PRESETS", "GLMConfig", "preset", "read_json_object"]

# How the fp16 rotary cos/sin table is built (docs/glm-semantics.md). "sat-0.2": inv_freq, positions and the
# product in fp16, as SwissArmyTransformer 0.2.12 that GLM-130B was released with; "sat-0.4": everything in fp32 and
# cast at the end, as SwissArmyTransformer 0.4.x. Only fp16 models are affected; bf16/fp32 always use fp32.
ROTARY_RECIPES = ("sat-0.2", "sat-0.4")


@dataclass(frozen=True)
class GLMConfig(DecoderConfig):
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

    mlp_units_name: ClassVar[str] = "GeGLU units"

    def __post_init__(self) -> None:
        for name in (
            "num_layers",
            "hidden_size",
            "num_attention_heads",
            "inner_hidden_size",
            "vocab_size",
            "max_sequence_length",
        ):
            positive_int(name, getattr(self, name))
        for name in ("layernorm_epsilon", "rotary_base"):
            number(name, getattr(self, name))
        if not isinstance(self.vocab_layout, VocabLayout):
            raise ConfigError(f"vocab_layout must be a VocabLayout, got {type(self.vocab_layout).__name__}")
        heads_divide_hidden(self.num_attention_heads, self.hidden_size)
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
    def deepnorm_alpha(self) -> float:
        """DeepNorm residual scale ``sqrt(2 * num_layers)`` (sqrt(140) for GLM-130B), a Python float as in SAT."""
        return (2 * self.num_layers) ** 0.5

    def num_parameters(self) -> int:
        """Parameter count from the shapes (embedding counted once: the output projection is tied)."""
        h, i = self.hidden_size, self.inner_hidden_size
        per_layer = (3 * h * h + 3 * h) + (h * h + h) + (2 * i * h + 2 * i) + (i * h + h) + 4 * h
        return self.vocab_size * h + self.num_layers * per_layer + 2 * h

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


PRESETS: dict[str, GLMConfig] = {
    # GLM-130B as released (docs/glm-semantics.md).
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


# The conformance model checks' tiny GLM: three layers (layer scales 1..3), four heads (TP 1, 2, 4), widths that are
# multiples of 32 (groupwise INT4/INT8) and a small vocabulary laid out like GLM-130B's.
CONFORMANCE_CONFIG = GLMConfig(
    num_layers=3,
    hidden_size=64,
    num_attention_heads=4,
    inner_hidden_size=96,
    vocab_size=512,
    max_sequence_length=64,
    vocab_layout=VocabLayout(
        text_offset=10, mask=500, gmask=501, smask=502, eod=503, sop=504, eop=505, enc=506, dblock=507, eos=12, pad=0
    ),
)


def preset(name: str) -> GLMConfig:
    """Return the named preset config, or a ConfigError that lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown config preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
