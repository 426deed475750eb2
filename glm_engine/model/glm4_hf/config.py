"""GLM-4 in transformers' native layout (``GlmForCausalLM``: ``glm-4-9b-chat-hf``; ``Glm4ForCausalLM``: the
GLM-4-0414 line): their ``config.json`` read into the shared causal config, and presets.

transformers 4.x writes ``rope_theta`` and ``partial_rotary_factor`` at the top level; 5.x nests them in
``rope_parameters``. Both are read; a rope type other than the default (YaRN, dynamic NTK ...) is refused rather than
run without it. ``Glm4`` adds an RMSNorm on each branch's output; both round RMSNorm before the gain, as their
``GlmRMSNorm`` does (``docs/families.md#glm-4-native``).
"""

from __future__ import annotations

from typing import Any

from glm_engine.errors import ConfigError
from glm_engine.model.causal_glm.config import ROTARY_FP32, TINY_SIZES, CausalGLMConfig
from glm_engine.model.config_checks import read_json_object

MODEL_TYPES = {"glm": "GlmForCausalLM", "glm4": "Glm4ForCausalLM"}
DEFAULT_PARTIAL_ROTARY = 0.5  # both classes' default
# GlmConfig's (and Glm4Config's) defaults for keys a config.json leaves out.
REFERENCE_DEFAULTS: dict[str, Any] = {
    "vocab_size": 151552,
    "hidden_size": 4096,
    "intermediate_size": 13696,
    "num_hidden_layers": 40,
    "num_attention_heads": 32,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1.5625e-07,
    "attention_bias": True,
    "pad_token_id": 151329,
    "eos_token_id": [151329, 151336, 151338],
}


class GlmHFConfig(CausalGLMConfig):
    """A transformers-native GLM-4 (``release`` is the model type: "glm" or "glm4")."""

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], source: str = "config") -> GlmHFConfig:
        """Read a transformers ``config.json``; absent keys take ``GlmConfig``/``Glm4Config``'s defaults."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source} must hold a JSON object")
        model_type = data.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ConfigError(f"{source} describes a {model_type!r} model, not one of {sorted(MODEL_TYPES)}")
        values = {**REFERENCE_DEFAULTS, **{k: v for k, v in data.items() if v is not None}}
        if values.get("tie_word_embeddings"):
            raise ConfigError(f"{source} ties the output to the embedding; no GLM-4 release does, glm-engine neither")
        if values["hidden_act"] != "silu":
            raise ConfigError(f"{source}: hidden_act {values['hidden_act']!r}; GLM-4's MLP is SwiGLU (silu)")
        head_dim = values["head_dim"]
        theta, factor = _rope(data, source)
        eos = values["eos_token_id"]
        return cls(
            num_layers=values["num_hidden_layers"],
            hidden_size=values["hidden_size"],
            num_attention_heads=values["num_attention_heads"],
            num_kv_heads=values["num_key_value_heads"],
            kv_channels=head_dim,
            inner_hidden_size=values["intermediate_size"],
            vocab_size=values["vocab_size"],
            max_sequence_length=values["max_position_embeddings"],
            layernorm_epsilon=values["rms_norm_eps"],
            rotary_base=theta,
            rotary_dims=int(head_dim * factor) if isinstance(head_dim, int) else 0,
            release=model_type,
            rotary_recipe=ROTARY_FP32,
            qkv_bias=bool(values["attention_bias"]),
            branch_norms=model_type == "glm4",
            norm_weight_in_fp32=False,
            eos_token_ids=tuple(eos) if isinstance(eos, list) else (eos,),
            pad_token_id=values["pad_token_id"],
        )

    @classmethod
    def from_json_file(cls, path: Any) -> GlmHFConfig:
        return cls.from_hf_dict(read_json_object(path), str(path))


def _rope(data: dict[str, Any], source: str) -> tuple[float, float]:
    """``(rope_theta, partial_rotary_factor)`` from either config form; a non-default rope type is an error."""
    nested = data.get("rope_parameters") or {}
    scaling = data.get("rope_scaling") or {}
    if not isinstance(nested, dict) or not isinstance(scaling, dict):
        raise ConfigError(f"{source}: rope_parameters / rope_scaling must be JSON objects")
    rope_type = nested.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ConfigError(
            f"{source} uses rope type {rope_type!r}; glm-engine runs the default rotary only (the released GLM-4 "
            "configs); remove the scaling to run the model at its trained context"
        )
    theta = nested.get("rope_theta", data.get("rope_theta", 10000.0))
    factor = nested.get("partial_rotary_factor", data.get("partial_rotary_factor", DEFAULT_PARTIAL_ROTARY))
    for name, value in (("rope_theta", theta), ("partial_rotary_factor", factor)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{source}: {name} must be a positive number, got {value!r}")
    if factor > 1:
        raise ConfigError(f"{source}: partial_rotary_factor must be at most 1, got {factor}")
    return float(theta), float(factor)


def _preset(model_type: str, **sizes: Any) -> GlmHFConfig:
    defaults: dict[str, Any] = {
        "num_attention_heads": 32,
        "num_kv_heads": 2,
        "kv_channels": 128,
        "rotary_dims": 64,
        "hidden_size": 4096,
        "inner_hidden_size": 13696,
        "vocab_size": 151552,
        "layernorm_epsilon": 1.5625e-07,
        "rotary_base": 10000.0,
        "eos_token_ids": (151329, 151336, 151338),
        "pad_token_id": 151329,
        "branch_norms": model_type == "glm4",
        "norm_weight_in_fp32": False,
    }
    return GlmHFConfig(release=model_type, **{**defaults, **sizes})


_TINY = {**TINY_SIZES, "layernorm_epsilon": 1e-5, "eos_token_ids": (4000, 4007, 4009), "pad_token_id": 4000}
GLM_HF_PRESETS: dict[str, GlmHFConfig] = {
    # THUDM/glm-4-9b-chat-hf's shapes with GLM-4's base (10000 * rope_ratio 500: the remote model's);
    # THUDM/GLM-4-9B-0414 (eps 1e-5, 32K positions)
    "glm-4-9b-chat-hf": _preset("glm", num_layers=40, max_sequence_length=131072, rotary_base=5_000_000.0),
    "glm-4-9b-0414": _preset("glm4", num_layers=40, max_sequence_length=32768, layernorm_epsilon=1e-5),
    # Tiny models over the packaged tiny GLM-4 tokenizer (specials at 4000..), for tests and demos.
    "glm4-hf-tiny": _preset("glm", **_TINY),
    "glm4-0414-tiny": _preset("glm4", **_TINY),
}
CONFORMANCE_CONFIG = _preset(
    "glm4",
    **{
        **_TINY,
        "num_layers": 3,
        "vocab_size": 512,
        "max_sequence_length": 64,
        "eos_token_ids": (500,),
        "pad_token_id": 500,
    },
)
