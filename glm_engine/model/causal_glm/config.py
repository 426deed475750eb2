"""The config every causal GLM after ChatGLM-6B shares (ChatGLM2/3, GLM-4, GLM-4-0414), in one set of names.

Each release spells these numbers its own way (``multi_query_group_num`` or ``num_key_value_heads``, ``rope_ratio`` or
``rope_theta``, ``kv_channels`` or ``head_dim``); the family folders read their ``config.json`` into this one form, so
the graph, the rotary tables and tensor parallelism read one set of names (``docs/families.md``). Numeric choices that
differ between releases of the same shapes are explicit fields: the rotary table's recipe, where RMSNorm rounds, the
branch norms.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar

from glm_engine.errors import ConfigError
from glm_engine.model.config_checks import DecoderConfig, non_negative_int, number, positive_int

# How a release builds its rotary table (``docs/families.md#rotary-tables``).
ROTARY_IN_MODEL_DTYPE = "model-dtype"  # ChatGLM2: frequencies, positions and their product in the model's dtype
ROTARY_FP32 = "fp32"  # ChatGLM3, GLM-4 and transformers' Glm/Glm4: all in fp32, cos/sin cast to the model's dtype
ROTARY_RECIPES = (ROTARY_IN_MODEL_DTYPE, ROTARY_FP32)
QUANTIZATION_BITS = (0, 4, 8)


@dataclass(frozen=True)
class CausalGLMConfig(DecoderConfig):
    """Shape and numerics of a pre-norm, RMSNorm, SwiGLU, grouped-query GLM with partial interleaved rotary."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int  # key/value groups; query head i reads group i // (heads / groups)
    kv_channels: int  # the head dimension (it need not be hidden / heads)
    inner_hidden_size: int  # the SwiGLU width (each of gate and up)
    vocab_size: int  # the (padded) embedding and output rows
    max_sequence_length: int
    layernorm_epsilon: float
    rotary_base: float  # the base the frequencies are built from (``10000 * rope_ratio`` or ``rope_theta``)
    rotary_dims: int  # dims of each head the rotation covers (the first ones), in GPT-J pairs
    release: str  # which release's tokenizer, chat format and names apply ("chatglm2", "chatglm3", "glm4", ...)
    rotary_recipe: str = ROTARY_FP32
    position_divisor: float = 1.0  # ChatGLM2-32k divides positions by its ``rope_ratio`` (linear interpolation)
    qkv_bias: bool = True
    qkv_per_head: bool = False  # fused QKV rows ``[q | k | v]`` per head (remote code without multi-query attention)
    linear_bias: bool = False  # biases on the output projection and the MLP (``add_bias_linear``; no release sets it)
    branch_norms: bool = False  # GLM-4-0414's RMSNorm on each branch's output before the residual
    norm_weight_in_fp32: bool = True  # RMSNorm rounds once after the gain (remote code) or before it (transformers)
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    quantization_bit: int = 0

    mlp_units_name: ClassVar[str] = "SwiGLU units"

    def __post_init__(self) -> None:
        for name in (
            "num_layers",
            "hidden_size",
            "num_attention_heads",
            "num_kv_heads",
            "kv_channels",
            "inner_hidden_size",
            "vocab_size",
            "max_sequence_length",
            "rotary_dims",
        ):
            positive_int(name, getattr(self, name))
        for name in ("layernorm_epsilon", "rotary_base", "position_divisor"):
            number(name, getattr(self, name))
        object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))
        for value in (*self.eos_token_ids, self.pad_token_id):
            non_negative_int("a special token id", value)
            if value >= self.vocab_size:
                raise ConfigError(f"special token id {value} must be below vocab_size ({self.vocab_size})")
        self._check_numerics()

    def _check_numerics(self) -> None:
        if self.qkv_per_head and self.num_kv_heads != self.num_attention_heads:
            raise ConfigError("per-head QKV rows hold one key/value head per query head (no grouping)")
        if self.num_attention_heads % self.num_kv_heads:
            raise ConfigError(
                f"the key/value groups ({self.num_kv_heads}) must divide the attention heads "
                f"({self.num_attention_heads})"
            )
        if self.rotary_dims > self.kv_channels or self.rotary_dims % 2:
            raise ConfigError(
                f"rotary dims ({self.rotary_dims}) must be even and at most the head dimension ({self.kv_channels})"
            )
        if not 0 < self.layernorm_epsilon < 1:
            raise ConfigError(f"the norm epsilon must be in (0, 1), got {self.layernorm_epsilon}")
        if self.rotary_base <= 1 or self.position_divisor <= 0:
            raise ConfigError(f"the rotary base must be > 1 ({self.rotary_base}) and positions divide by > 0")
        if self.rotary_recipe not in ROTARY_RECIPES:
            raise ConfigError(f"rotary_recipe must be one of {ROTARY_RECIPES}, got {self.rotary_recipe!r}")
        if self.quantization_bit not in QUANTIZATION_BITS:
            raise ConfigError(f"quantization_bit must be one of {QUANTIZATION_BITS}, got {self.quantization_bit!r}")

    @property
    def head_dim(self) -> int:
        return self.kv_channels

    @property
    def end_token_ids(self) -> tuple[int, ...]:
        """Tokens that end generation (the config's ``eos_token_id``, one or a list)."""
        return self.eos_token_ids

    def tp_problem(self, tp: int) -> str | None:
        """Key/value groups are split when they divide by ``tp`` and replicated when ``tp`` is a multiple of them."""
        groups = self.num_kv_heads
        if tp >= 1 and groups % tp and tp % groups:
            return f"{groups} key/value groups neither divide by {tp} nor divide it"
        return None

    def num_parameters(self) -> int:
        """Parameter count from the shapes (embedding and output counted apart: they are separate tensors)."""
        h, i, d = self.hidden_size, self.inner_hidden_size, self.kv_channels
        qkv_rows = (self.num_attention_heads + 2 * self.num_kv_heads) * d
        per_layer = qkv_rows * h + self.num_attention_heads * d * h + 3 * i * h + 2 * h
        per_layer += qkv_rows if self.qkv_bias else 0
        per_layer += (h + 2 * i + h) if self.linear_bias else 0
        per_layer += 2 * h if self.branch_norms else 0
        return 2 * self.vocab_size * h + self.num_layers * per_layer + h

    # --- the engine's own (exported folders) form --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["eos_token_ids"] = list(self.eos_token_ids)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> CausalGLMConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown config keys {unknown}; known keys are {sorted(known)}")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.name not in data]
        if required:
            raise ConfigError(f"{source}: missing required config keys {required}")
        return cls(**data)


# The tiny models' shape (2 layers, 4 heads in 2 key/value groups of 16 dims, 8 of them rotated) over the packaged
# tiny tokenizers' 4000 text ids and their specials, padded to 4096 rows: every causal family's tiny presets.
TINY_SIZES: dict[str, int] = {
    "num_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_kv_heads": 2,
    "kv_channels": 16,
    "rotary_dims": 8,
    "inner_hidden_size": 96,
    "vocab_size": 4096,
    "max_sequence_length": 512,
}
