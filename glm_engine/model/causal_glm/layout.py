"""The shapes and tensor-parallel splits of a causal GLM layer, whatever the release calls its keys."""

from __future__ import annotations

from glm_engine.model.causal_glm.config import CausalGLMConfig
from glm_engine.parallel.sharding import GroupedQKV, Split, SplitRule


def layer_shapes(config: CausalGLMConfig) -> dict[str, tuple[int, ...]]:
    """Each LayerWeights field's TP=1 shape."""
    h, i, d = config.hidden_size, config.inner_hidden_size, config.kv_channels
    qkv = (config.num_attention_heads + 2 * config.num_kv_heads) * d
    return {
        "input_layernorm_weight": (h,),
        "query_key_value_weight": (qkv, h),
        "query_key_value_bias": (qkv,),
        "dense_weight": (h, config.num_attention_heads * d),
        "dense_bias": (h,),
        "post_attention_layernorm_weight": (h,),
        "dense_h_to_4h_weight": (2 * i, h),
        "dense_h_to_4h_bias": (2 * i,),
        "dense_4h_to_h_weight": (h, i),
        "dense_4h_to_h_bias": (h,),
        "post_self_attn_layernorm_weight": (h,),
        "post_mlp_layernorm_weight": (h,),
    }


def field_split(config: CausalGLMConfig, field_name: str) -> SplitRule:
    """The tensor-parallel split of a layer field (the same in both layouts)."""
    if field_name.startswith("query_key_value"):
        return GroupedQKV(config.num_attention_heads, config.num_kv_heads, config.kv_channels)
    if field_name.startswith("dense_h_to_4h"):
        return Split.GLU_COLUMN
    if field_name in ("dense_weight", "dense_4h_to_h_weight"):
        return Split.ROW
    return Split.REPLICATED
