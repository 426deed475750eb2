"""Native GLM-4 weights (transformers' ``GlmForCausalLM`` / ``Glm4ForCausalLM``): key names, shapes, splits and the
release spec.

The files hold ``self_attn.{q,k,v}_proj`` apart; the graph runs one ``[q heads | k groups | v groups]`` matrix, so the
layout names a fused ``self_attn.qkv_proj`` key built from the three while loading (``hf_release.ReleaseSpec.fused``).
``mlp.gate_up_proj`` is ``[gate | up]`` as in the remote layout; ``o_proj`` and ``down_proj`` are the row-parallel
linears; ``Glm4`` adds ``post_self_attn_layernorm`` and ``post_mlp_layernorm`` (``docs/families.md#glm-4-native``).
"""

from __future__ import annotations

import torch

from glm_engine.model.causal_glm.config import CausalGLMConfig
from glm_engine.model.causal_glm.layout import field_split, layer_shapes
from glm_engine.model.hf_release import ReleaseSpec
from glm_engine.model.weights import WeightLayout, scaled_noise
from glm_engine.parallel.sharding import Split, SplitRule

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


def layer_fields(config: CausalGLMConfig) -> tuple[str, ...]:
    names = ["input_layernorm_weight", "query_key_value_weight", "dense_weight", "post_attention_layernorm_weight"]
    names += ["dense_h_to_4h_weight", "dense_4h_to_h_weight"]
    if config.qkv_bias:
        names.append("query_key_value_bias")
    if config.branch_norms:
        names += ["post_self_attn_layernorm_weight", "post_mlp_layernorm_weight"]
    return tuple(names)


def weight_layout(config: CausalGLMConfig) -> WeightLayout:
    """Every layout key with its TP=1 shape and split (the fused QKV under its ``qkv_proj`` name)."""
    shapes_of, fields = layer_shapes(config), layer_fields(config)
    shapes: dict[str, tuple[int, ...]] = {EMBEDDING_KEY: (config.vocab_size, config.hidden_size)}
    splits: dict[str, SplitRule] = {EMBEDDING_KEY: Split.COLUMN, OUTPUT_KEY: Split.COLUMN}
    for layer in range(config.num_layers):
        for name in fields:
            shapes[layer_key(layer, name)] = shapes_of[name]
            splits[layer_key(layer, name)] = field_split(config, name)
    shapes[FINAL_NORM_KEY] = (config.hidden_size,)
    shapes[OUTPUT_KEY] = (config.vocab_size, config.hidden_size)
    return WeightLayout(
        shapes,
        lambda key: splits.get(key, Split.REPLICATED),
        config.num_layers,
        EMBEDDING_KEY,
        (FINAL_NORM_KEY,),
        OUTPUT_KEY,
        IGNORED_KEY_SUFFIXES,
        layer_key=layer_key,
        layer_fields=fields,
    )


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
    summary = (
        f"the {config.release} config ({config.num_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads in {config.num_kv_heads} groups, MLP {config.inner_hidden_size}, "
        f"vocab {config.vocab_size})"
    )
    return ReleaseSpec(weight_layout(config), summary, MODEL_KEY_PREFIXES, 0, fused_parts(config))


def random_state_dict(
    config: CausalGLMConfig, seed: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Seeded random weights under transformers' names (q/k/v apart), scaled as ``weights.scaled_noise`` does."""
    gen = torch.Generator().manual_seed(seed)
    return {
        key: scaled_noise(key, torch.randn(shape, generator=gen)).to(dtype)
        for key, shape in release_spec(config).file_shapes().items()
    }
