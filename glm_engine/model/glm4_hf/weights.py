"""Native GLM-4 weights (transformers' ``GlmForCausalLM`` / ``Glm4ForCausalLM``): key names, shapes, splits and the
release spec.

The files hold ``self_attn.{q,k,v}_proj`` apart; the graph runs one ``[q heads | k groups | v groups]`` matrix, so the
layout names a fused ``self_attn.qkv_proj`` key built from the three while loading (``hf_release.ReleaseSpec.fused``).
``mlp.gate_up_proj`` is ``[gate | up]`` as in the remote layout; ``o_proj`` and ``down_proj`` are the row-parallel
linears; ``Glm4`` adds ``post_self_attn_layernorm`` and ``post_mlp_layernorm`` (``docs/families.md#glm-4-native``).
"""

from __future__ import annotations

from glm_engine.model.causal_glm.config import CausalGLMConfig
from glm_engine.model.causal_glm.layout import ReleaseNames, causal_weight_layout, release_summary
from glm_engine.model.hf_release import ReleaseSpec
from glm_engine.model.weights import WeightLayout

EMBEDDING_KEY = "model.embed_tokens.weight"
FINAL_NORM_KEY = "model.norm.weight"
OUTPUT_KEY = "lm_head.weight"
IGNORED_KEY_SUFFIXES = ("rotary_emb.inv_freq",)
MODEL_KEY_PREFIXES = ("model.", "lm_head.")
# LayerWeights field -> key suffix after ``model.layers.{i}.`` (``qkv_proj``: fused from q/k/v_proj while loading)
LAYER_KEY_SUFFIX = {
    "input_layernorm_weight": "input_layernorm.weight",
    "query_key_value_weight": "self_attn.qkv_proj.weight",
    "query_key_value_bias": "self_attn.qkv_proj.bias",
    "dense_weight": "self_attn.o_proj.weight",
    "post_self_attn_layernorm_weight": "post_self_attn_layernorm.weight",
    "post_attention_layernorm_weight": "post_attention_layernorm.weight",
    "dense_h_to_4h_weight": "mlp.gate_up_proj.weight",
    "dense_4h_to_h_weight": "mlp.down_proj.weight",
    "post_mlp_layernorm_weight": "post_mlp_layernorm.weight",
}


def layer_key(layer: int, field_name: str) -> str:
    return f"model.layers.{layer}.{LAYER_KEY_SUFFIX[field_name]}"


NAMES = ReleaseNames(EMBEDDING_KEY, FINAL_NORM_KEY, OUTPUT_KEY, IGNORED_KEY_SUFFIXES, layer_key)


def weight_layout(config: CausalGLMConfig) -> WeightLayout:
    """Every layout key with its TP=1 shape and split (the fused QKV under its ``qkv_proj`` name)."""
    return causal_weight_layout(config, NAMES)


def fused_parts(config: CausalGLMConfig) -> dict[str, tuple[tuple[str, int], ...]]:
    """Each layer's fused QKV weight (and bias) -> its ``q_proj``, ``k_proj``, ``v_proj`` keys and rows."""
    d = config.kv_channels
    rows = (config.num_attention_heads * d, config.num_kv_heads * d, config.num_kv_heads * d)
    out = {}
    for layer in range(config.num_layers):
        for kind in ("weight", "bias") if config.qkv_bias else ("weight",):
            fused = layer_key(layer, f"query_key_value_{kind}")
            parts = [f"model.layers.{layer}.self_attn.{p}_proj.{kind}" for p in "qkv"]
            out[fused] = tuple(zip(parts, rows))
    return out


def release_spec(config: CausalGLMConfig) -> ReleaseSpec:
    return ReleaseSpec(weight_layout(config), release_summary(config), MODEL_KEY_PREFIXES, 0, fused_parts(config))
