"""ChatGLM-6B (v1) config: a validated frozen dataclass with the Hugging Face ``config.json`` names, and presets.

The field names are those of the reference's ``configuration_chatglm.py`` (``num_layers``, ``inner_hidden_size``,
``bos_token_id`` ...), so the ``config.json`` shipped with ``THUDM/chatglm-6b`` reads unchanged; keys the
Hugging Face machinery adds (``architectures``, ``auto_map``, ``torch_dtype`` ...) are ignored. What the reference
hard-codes rather than configures (rotary base, DeepNorm depth) are constants here, with the reason beside them.
See ``docs/families.md`` for how the graph uses each field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from glm_engine.errors import ConfigError
from glm_engine.model.config_checks import (
    DecoderConfig,
    heads_divide_hidden,
    non_negative_int,
    positive_int,
    read_json_object,
)

# ``ChatGLMModel`` builds every ``GLMBlock`` without passing ``num_layers``, so the block's default of 28 sets the
# DeepNorm scale ``alpha = sqrt(2 * 28)`` for every depth (the released model has 28 layers, so it agrees there;
# a smaller test config still uses sqrt(56)).
DEEPNORM_NUM_LAYERS = 28
# tokenizer_config.json's ``num_image_tokens``: 0 since the 2023-04-06 "slim" revision (vocab 130528); the first
# release (vocab 150528) put 20000 image ids in front of the text pieces, as icetk does.
SLIM_NUM_IMAGE_TOKENS = 0
ORIGINAL_NUM_IMAGE_TOKENS = 20000
# The reference's QuantizedLinear supports these weight bit widths (0 = not quantized).
QUANTIZATION_BITS = (0, 4, 8)
# config.json keys that describe the Hugging Face wrapper, not the model: read and ignored.
HF_WRAPPER_KEYS = frozenset(
    {
        "_name_or_path",
        "architectures",
        "auto_map",
        "model_type",
        "torch_dtype",
        "transformers_version",
        "use_cache",
        "prefix_projection",
        "quantization_embeddings",
    }
)
MODEL_TYPE = "chatglm"


@dataclass(frozen=True)
class ChatGLMConfig(DecoderConfig):
    """Shape, special ids and quantization of a ChatGLM-6B-style model (2-D rotary, GeLU MLP, separate lm_head)."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    inner_hidden_size: int
    vocab_size: int
    max_sequence_length: int = 2048
    layernorm_epsilon: float = 1e-5
    bos_token_id: int = 130004  # <sop>
    eos_token_id: int = 130005  # <eop>
    mask_token_id: int = 130000  # [MASK]
    gmask_token_id: int = 130001  # [gMASK]
    pad_token_id: int = 3  # <pad>
    position_encoding_2d: bool = True
    quantization_bit: int = 0
    num_image_tokens: int = SLIM_NUM_IMAGE_TOKENS  # from tokenizer_config.json: where text piece 0 sits
    # transformers' default (PretrainedConfig): lm_head shares the embedding, so a folder may leave lm_head out
    tie_word_embeddings: bool = True

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
        for name in ("bos_token_id", "eos_token_id", "mask_token_id", "gmask_token_id", "pad_token_id"):
            value = getattr(self, name)
            non_negative_int(name, value)
            if value >= self.vocab_size:
                raise ConfigError(f"{name} ({value}) must be below vocab_size ({self.vocab_size})")
        non_negative_int("num_image_tokens", self.num_image_tokens)
        if not isinstance(self.tie_word_embeddings, bool):
            raise ConfigError(f"tie_word_embeddings must be true or false, got {self.tie_word_embeddings!r}")
        eps = self.layernorm_epsilon
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
            raise ConfigError(f"layernorm_epsilon must be a number in (0, 1), got {eps!r}")
        if self.position_encoding_2d is not True:
            raise ConfigError(
                "position_encoding_2d must be true: ChatGLM-6B was released with 2-D rotary positions, and the "
                "reference's 1-D path cannot decode with a cache"
            )
        if self.quantization_bit not in QUANTIZATION_BITS:
            raise ConfigError(f"quantization_bit must be one of {QUANTIZATION_BITS}, got {self.quantization_bit!r}")
        heads_divide_hidden(self.num_attention_heads, self.hidden_size)
        if self.head_dim % 4:
            raise ConfigError(
                f"the head dimension ({self.head_dim}) must be a multiple of 4: 2-D rotary splits it into two "
                "halves, each rotated in pairs"
            )

    @property
    def rotary_dim(self) -> int:
        """Each of the two rotary halves: position ids rotate dims ``[0, d/2)``, block position ids ``[d/2, d)``."""
        return self.head_dim // 2

    @property
    def deepnorm_alpha(self) -> float:
        """``sqrt(2 * 28)`` whatever ``num_layers`` is (see ``DEEPNORM_NUM_LAYERS``), a Python float as in the
        reference."""
        return (2 * DEEPNORM_NUM_LAYERS) ** 0.5

    @property
    def end_token_ids(self) -> tuple[int, ...]:
        """Tokens that end a reply: ``eos_token_id`` (``<eop>``), the only one the reference's ``generate`` stops
        on."""
        return (self.eos_token_id,)

    def num_parameters(self) -> int:
        """Parameter count from the shapes: embedding and lm_head both counted (they are separate tensors)."""
        h, i = self.hidden_size, self.inner_hidden_size
        per_layer = (3 * h * h + 3 * h) + (h * h + h) + (i * h + i) + (i * h + h) + 4 * h
        return 2 * self.vocab_size * h + self.num_layers * per_layer + 2 * h

    # --- (de)serialisation -------------------------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` the reference writes (plus ``model_type``), without ``num_image_tokens``, which lives
        in ``tokenizer_config.json``."""
        data = asdict(self)
        del data["num_image_tokens"]
        if self.tie_word_embeddings:  # the default, left out as transformers leaves defaults out
            del data["tie_word_embeddings"]
        return {"model_type": MODEL_TYPE, **data}

    @classmethod
    def from_hf_dict(
        cls, data: dict[str, Any], source: str = "config", num_image_tokens: int | None = None
    ) -> ChatGLMConfig:
        """Read a Hugging Face ChatGLM ``config.json``; unknown model keys and P-tuning prefixes are refused."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source} must hold a JSON object")
        model_type = data.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ConfigError(f"{source} describes a {model_type!r} model, not ChatGLM-6B ({MODEL_TYPE!r})")
        if data.get("pre_seq_len") is not None:
            raise ConfigError(
                f"{source} sets pre_seq_len={data['pre_seq_len']} (a P-tuning v2 prefix), which glm-engine does not "
                "run; merge or drop the prefix encoder and set pre_seq_len to null"
            )
        known = {f.name for f in fields(cls)} - {"num_image_tokens"}
        unknown = sorted(set(data) - known - HF_WRAPPER_KEYS - {"pre_seq_len"})
        if unknown:
            raise ConfigError(f"{source}: unknown ChatGLM config keys {unknown}; known keys are {sorted(known)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        missing = [n for n in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size") if n not in kwargs]
        if missing:
            raise ConfigError(f"{source}: missing required config keys {missing}")
        # The reference defaults the MLP width to 4 * hidden when the key is absent.
        kwargs.setdefault("inner_hidden_size", 4 * kwargs["hidden_size"])
        kwargs["quantization_bit"] = kwargs.get("quantization_bit") or 0
        if num_image_tokens is None:
            # The first release's ids (bos 150004) sit after 20000 image ids; the slim revision's (130004) do not.
            bos = kwargs.get("bos_token_id", cls.bos_token_id)
            num_image_tokens = ORIGINAL_NUM_IMAGE_TOKENS if bos >= 150000 else SLIM_NUM_IMAGE_TOKENS
        return cls(**kwargs, num_image_tokens=num_image_tokens)

    @classmethod
    def from_json_file(cls, path: str | Path, num_image_tokens: int | None = None) -> ChatGLMConfig:
        data = read_json_object(path)
        return cls.from_hf_dict(data, source=str(path), num_image_tokens=num_image_tokens)


CHATGLM_PRESETS: dict[str, ChatGLMConfig] = {
    # THUDM/chatglm-6b config.json, slim revision (2023-04-06 and later).
    "chatglm-6b": ChatGLMConfig(
        num_layers=28,
        hidden_size=4096,
        num_attention_heads=32,
        inner_hidden_size=16384,
        vocab_size=130528,
        max_sequence_length=2048,
    ),
    # Two layers with a small vocabulary laid out like the slim one around the packaged 4000-piece test tokenizer:
    # text ids are piece ids, the specials follow at 4000 + their ChatGLM offset ([MASK] 4000, [gMASK] 4001,
    # <sop> 4004, <eop> 4005), <pad> is piece 3. For tests and demos.
    "chatglm-tiny": ChatGLMConfig(
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        inner_hidden_size=160,
        vocab_size=4096,
        max_sequence_length=256,
        bos_token_id=4004,
        eos_token_id=4005,
        mask_token_id=4000,
        gmask_token_id=4001,
        pad_token_id=3,
    ),
}


# The conformance model checks' tiny ChatGLM: three layers, four heads of 16 (2-D rotary halves of 8), widths that are
# multiples of 32 and a vocabulary of 512 with the specials at the slim release's offsets from 500.
CONFORMANCE_CONFIG = ChatGLMConfig(
    num_layers=3,
    hidden_size=64,
    num_attention_heads=4,
    inner_hidden_size=96,
    vocab_size=512,
    max_sequence_length=64,
    bos_token_id=504,
    eos_token_id=505,
    mask_token_id=500,
    gmask_token_id=501,
    pad_token_id=3,
)


def chatglm_preset(name: str) -> ChatGLMConfig:
    """The named ChatGLM preset, or a ConfigError that lists the known names."""
    try:
        return CHATGLM_PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown ChatGLM preset {name!r}; known presets: {', '.join(sorted(CHATGLM_PRESETS))}"
        ) from None
