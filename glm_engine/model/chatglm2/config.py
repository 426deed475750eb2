"""ChatGLM2-6B, ChatGLM3-6B and GLM-4-9B in THUDM's remote-code layout: their ``config.json`` read into the shared
causal config, which release a folder is, and presets.

All three say ``model_type: "chatglm"`` (as ChatGLM-6B does; these are told apart by ``multi_query_group_num`` /
``padded_vocab_size``). What differs between them is not in the config's shapes: the rotary recipe (ChatGLM2 builds
its table in the model's dtype and divides positions by ``rope_ratio``; ChatGLM3 and GLM-4 build it in fp32 and
multiply the base by ``rope_ratio``), the tokenizer and the chat format, so the release is read from the vocabulary
size and the tokenizer files (``docs/families.md#chatglm2-chatglm3-glm-4``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glm_engine.errors import ConfigError
from glm_engine.model.causal_glm.config import ROTARY_FP32, ROTARY_IN_MODEL_DTYPE, TINY_SIZES, CausalGLMConfig
from glm_engine.model.config_checks import read_json_object

MODEL_TYPE = "chatglm"
RELEASES = ("chatglm2", "chatglm3", "glm4")
ROTARY_BASE = 10000.0  # RotaryEmbedding's base before rope_ratio: a constant in every release's code
GLM4_MIN_VOCAB = 100_000  # GLM-4's padded vocabulary is 151552; ChatGLM2/3's 65024
# Keys that mark a config as ChatGLM2 or later (ChatGLM-6B v1 has none of them).
V2_KEYS = ("multi_query_group_num", "padded_vocab_size", "ffn_hidden_size")
# configuration_chatglm.py's defaults for keys a config.json leaves out (and the tokenizers' eos/pad ids).
REFERENCE_DEFAULTS: dict[str, Any] = {
    "num_layers": 28,
    "padded_vocab_size": 65024,
    "hidden_size": 4096,
    "ffn_hidden_size": 13696,
    "kv_channels": 128,
    "num_attention_heads": 32,
    "seq_length": 2048,
    "layernorm_epsilon": 1e-5,
    "add_bias_linear": False,
    "add_qkv_bias": False,
    "multi_query_attention": False,
    "multi_query_group_num": 1,
    "rope_ratio": 1,
    "quantization_bit": 0,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
# Switches the releases all set one way; another value would need code no release has.
FIXED_SWITCHES = {
    "rmsnorm": True,
    "post_layer_norm": True,
    "apply_residual_connection_post_layernorm": False,
    "fp32_residual_connection": False,
}


class ChatGLM2Config(CausalGLMConfig):
    """A remote-code ChatGLM2/ChatGLM3/GLM-4 model (the shared fields; ``release`` says which)."""

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], source: str = "config", release: str | None = None) -> ChatGLM2Config:
        """Read a remote-code ``config.json``; the defaults of absent keys are ``configuration_chatglm.py``'s."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source} must hold a JSON object")
        if data.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise ConfigError(f"{source} describes a {data.get('model_type')!r} model, not ChatGLM2/3 or GLM-4")
        _refuse_unsupported(data, source)
        values = {**REFERENCE_DEFAULTS, **{k: v for k, v in data.items() if v is not None}}
        release = release or release_from_config(values)
        if release not in RELEASES:
            raise ConfigError(f"unknown release {release!r}; one of {RELEASES}")
        ratio, kv_channels = values["rope_ratio"], values["kv_channels"]
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or ratio <= 0:
            raise ConfigError(f"{source}: rope_ratio must be a positive number, got {ratio!r}")
        grouped = bool(values["multi_query_attention"])
        eos = values["eos_token_id"]
        return cls(
            num_layers=values["num_layers"],
            hidden_size=values["hidden_size"],
            num_attention_heads=values["num_attention_heads"],
            num_kv_heads=values["multi_query_group_num"] if grouped else values["num_attention_heads"],
            kv_channels=kv_channels,
            inner_hidden_size=values["ffn_hidden_size"],
            vocab_size=values["padded_vocab_size"],
            max_sequence_length=values["seq_length"],
            layernorm_epsilon=values["layernorm_epsilon"],
            rotary_base=ROTARY_BASE * (1 if release == "chatglm2" else ratio),
            rotary_dims=kv_channels // 2 if isinstance(kv_channels, int) else 0,
            release=release,
            rotary_recipe=ROTARY_IN_MODEL_DTYPE if release == "chatglm2" else ROTARY_FP32,
            position_divisor=float(ratio) if release == "chatglm2" else 1.0,
            qkv_bias=bool(values["add_qkv_bias"] or values["add_bias_linear"]),
            qkv_per_head=not grouped,  # the reference views the rows per head without multi-query attention
            linear_bias=bool(values["add_bias_linear"]),
            eos_token_ids=tuple(eos) if isinstance(eos, list) else (eos,),
            pad_token_id=values["pad_token_id"],
            quantization_bit=values["quantization_bit"],
        )

    @classmethod
    def from_folder(cls, folder: Path) -> ChatGLM2Config:
        """``config.json`` of a Hugging Face folder, the release told apart by its tokenizer files."""
        path = folder / "config.json"
        data = read_json_object(path)
        return cls.from_hf_dict(data, str(path), release_of_folder(folder, data))


def _refuse_unsupported(data: dict[str, Any], source: str) -> None:
    for key, value in FIXED_SWITCHES.items():
        if key in data and bool(data[key]) != value:
            raise ConfigError(
                f"{source} sets {key}={data[key]!r}; every ChatGLM2/3 and GLM-4 release has {value} and glm-engine "
                "runs only that"
            )
    if data.get("pre_seq_len") is not None:
        raise ConfigError(
            f"{source} sets pre_seq_len={data['pre_seq_len']} (a P-tuning v2 prefix), which glm-engine does not run; "
            "merge or drop the prefix encoder and set pre_seq_len to null"
        )
    if "vision_config" in data:
        raise ConfigError(f"{source} is a GLM-4V vision model; glm-engine runs the text models only")


def is_v2_config(data: dict[str, Any]) -> bool:
    """Whether a ``model_type: chatglm`` config is ChatGLM2 or later rather than ChatGLM-6B (v1)."""
    return any(key in data for key in V2_KEYS)


def release_from_config(data: dict[str, Any]) -> str:
    """The release a config alone says: GLM-4 by its vocabulary or its name, ChatGLM3 by its name, else ChatGLM2."""
    name = str(data.get("_name_or_path", "")).lower()
    if isinstance(data.get("padded_vocab_size"), int) and data["padded_vocab_size"] >= GLM4_MIN_VOCAB:
        return "glm4"
    if "glm-4" in name or "glm4" in name:
        return "glm4"
    return "chatglm3" if "chatglm3" in name else "chatglm2"


def release_of_folder(folder: Path, data: dict[str, Any]) -> str:
    """The release of a folder: what its config says (:func:`release_from_config`), else its tokenizer files (GLM-4's
    ``tokenizer.model`` is a tiktoken rank file; ChatGLM3's tokenizer adds ``<|observation|>``); else ChatGLM2."""
    release = release_from_config(data)
    if release != "chatglm2":
        return release
    from glm_engine.tokenizer.chat_loading import release_from_files

    found = release_from_files(folder)
    return found if found in ("glm4", "chatglm3") else release


def _release_preset(release: str, **sizes: Any) -> ChatGLM2Config:
    glm4 = release == "glm4"
    defaults: dict[str, Any] = {
        "num_attention_heads": 32,
        "num_kv_heads": 2,
        "kv_channels": 128,
        "rotary_dims": 64,
        "hidden_size": 4096,
        "inner_hidden_size": 13696,
        "layernorm_epsilon": 1.5625e-07 if glm4 else 1e-5,
        "rotary_base": ROTARY_BASE * (500 if glm4 else 1),
        "rotary_recipe": ROTARY_IN_MODEL_DTYPE if release == "chatglm2" else ROTARY_FP32,
        "eos_token_ids": (151329, 151336, 151338) if glm4 else (2,),
        "pad_token_id": 151329 if glm4 else 0,
    }
    return ChatGLM2Config(release=release, **{**defaults, **sizes})


# The tiny tokenizers' specials follow their 4000 text ids (ChatGLM2/3: [MASK] 4000 ... <|observation|> 4008, eos 2,
# pad 0; GLM-4: <|endoftext|> 4000 ... <|observation|> 4009). For tests and demos.
_TINY = TINY_SIZES
CHATGLM2_PRESETS: dict[str, ChatGLM2Config] = {
    # THUDM/chatglm2-6b, THUDM/chatglm3-6b and THUDM/glm-4-9b(-chat) config.json
    "chatglm2-6b": _release_preset("chatglm2", num_layers=28, vocab_size=65024, max_sequence_length=32768),
    "chatglm3-6b": _release_preset("chatglm3", num_layers=28, vocab_size=65024, max_sequence_length=8192),
    "glm-4-9b": _release_preset("glm4", num_layers=40, vocab_size=151552, max_sequence_length=131072),
    "chatglm2-tiny": _release_preset("chatglm2", **_TINY),
    "chatglm3-tiny": _release_preset("chatglm3", **_TINY),
    "glm4-tiny": _release_preset(
        "glm4", **_TINY, layernorm_epsilon=1e-5, eos_token_ids=(4000, 4007, 4009), pad_token_id=4000
    ),
}
# The conformance model checks' tiny model: 3 layers, 4 heads in 2 groups, widths multiples of 32, vocabulary 512.
CONFORMANCE_CONFIG = _release_preset(
    "chatglm3",
    **{**_TINY, "num_layers": 3, "vocab_size": 512, "max_sequence_length": 64},
)
