"""The weight layout of a causal GLM (shapes, tensor-parallel splits, which tensors a layer holds), whatever the
release calls its keys: each family names them (:class:`ReleaseNames`), the rest is shared."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from glm_engine.model.causal_glm.config import CausalGLMConfig
from glm_engine.model.weights import WeightLayout
from glm_engine.parallel.sharding import GroupedQKV, Split, SplitRule


@dataclass(frozen=True)
class ReleaseNames:
    """A release's key names: the tensors outside the layers, and a layer tensor's key."""

    embedding: str
    final_norm: str
    output: str
    ignored_suffixes: tuple[str, ...]  # buffers the files carry that are recomputed, never loaded
    layer_key: Callable[[int, str], str]  # (layer, LayerWeights field) -> key


def layer_fields(config: CausalGLMConfig) -> tuple[str, ...]:
    """The LayerWeights fields a layer holds: the QKV bias where the release has one (``add_qkv_bias``,
    ``attention_bias``), the other linears' biases where ``add_bias_linear``, GLM-4-0414's branch norms."""
    names = ["input_layernorm_weight", "query_key_value_weight", "dense_weight", "post_attention_layernorm_weight"]
    names += ["dense_h_to_4h_weight", "dense_4h_to_h_weight"]
    if config.qkv_bias:
        names.append("query_key_value_bias")
    if config.linear_bias:
        names += ["dense_bias", "dense_h_to_4h_bias", "dense_4h_to_h_bias"]
    if config.branch_norms:
        names += ["post_self_attn_layernorm_weight", "post_mlp_layernorm_weight"]
    return tuple(names)


def causal_weight_layout(config: CausalGLMConfig, names: ReleaseNames) -> WeightLayout:
    """Every key with its TP=1 shape and split; the logits come from the separate output matrix."""
    shapes_of, fields = layer_shapes(config), layer_fields(config)
    shapes: dict[str, tuple[int, ...]] = {names.embedding: (config.vocab_size, config.hidden_size)}
    splits: dict[str, SplitRule] = {names.embedding: Split.COLUMN, names.output: Split.COLUMN}
    for layer in range(config.num_layers):
        for name in fields:
            shapes[names.layer_key(layer, name)] = shapes_of[name]
            splits[names.layer_key(layer, name)] = field_split(config, name)
    shapes[names.final_norm] = (config.hidden_size,)
    shapes[names.output] = (config.vocab_size, config.hidden_size)
    return WeightLayout(
        shapes,
        lambda key: splits.get(key, Split.REPLICATED),
        config.num_layers,
        names.embedding,
        (names.final_norm,),
        names.output,
        names.ignored_suffixes,
        layer_key=names.layer_key,
        layer_fields=fields,
    )


def release_summary(config: CausalGLMConfig) -> str:
    """The config in a phrase, for a checkpoint that does not match it."""
    return (
        f"the {config.release} config ({config.num_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads in {config.num_kv_heads} groups, MLP {config.inner_hidden_size}, "
        f"vocab {config.vocab_size})"
    )


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
        if config.qkv_per_head:  # whole heads of [q | k | v] rows: a contiguous split keeps each rank's heads
            return Split.COLUMN
        return GroupedQKV(config.num_attention_heads, config.num_kv_heads, config.kv_channels)
    if field_name.startswith("dense_h_to_4h"):
        return Split.GLU_COLUMN
    if field_name in ("dense_weight", "dense_4h_to_h_weight"):
        return Split.ROW
    return Split.REPLICATED
