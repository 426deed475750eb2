"""ChatGLM2/3 and GLM-4 (remote code) weights: key names, shapes, tensor-parallel splits and the release spec.

Keys are those of ``THUDM/chatglm2-6b``, ``chatglm3-6b`` and ``glm-4-9b`` (``transformer.embedding.word_embeddings``,
``transformer.encoder.layers.{i}.self_attention.query_key_value`` ..., ``transformer.output_layer``); the
``rotary_pos_emb.inv_freq`` buffer is recomputed, never loaded (the reference recomputes it too). The fused QKV rows
are ``[q heads | k groups | v groups]``, split per part across ranks
(:class:`~glm_engine.parallel.sharding.GroupedQKV`);
``dense_h_to_4h`` is ``[gate | up]``, split per half. The INT4/INT8 releases (``chatglm2-6b-int4``) quantize the four
linears of each layer with a per-row scale, the form ``model/hf_release.py`` reads (``docs/families.md``).
"""

from __future__ import annotations

from glm_engine.model.causal_glm.config import CausalGLMConfig
from glm_engine.model.causal_glm.layout import ReleaseNames, causal_weight_layout, release_summary
from glm_engine.model.hf_release import ReleaseSpec
from glm_engine.model.weights import WeightLayout

PREFIX = "transformer.encoder.layers"
EMBEDDING_KEY = "transformer.embedding.word_embeddings.weight"
FINAL_NORM_KEY = "transformer.encoder.final_layernorm.weight"
OUTPUT_KEY = "transformer.output_layer.weight"
IGNORED_KEY_SUFFIXES = ("rotary_pos_emb.inv_freq",)
MODEL_KEY_PREFIXES = ("transformer.",)
# LayerWeights field -> key suffix after ``transformer.encoder.layers.{i}.``
LAYER_KEY_SUFFIX = {
    "input_layernorm_weight": "input_layernorm.weight",
    "query_key_value_weight": "self_attention.query_key_value.weight",
    "query_key_value_bias": "self_attention.query_key_value.bias",
    "dense_weight": "self_attention.dense.weight",
    "dense_bias": "self_attention.dense.bias",
    "post_attention_layernorm_weight": "post_attention_layernorm.weight",
    "dense_h_to_4h_weight": "mlp.dense_h_to_4h.weight",
    "dense_h_to_4h_bias": "mlp.dense_h_to_4h.bias",
    "dense_4h_to_h_weight": "mlp.dense_4h_to_h.weight",
    "dense_4h_to_h_bias": "mlp.dense_4h_to_h.bias",
}


def layer_key(layer: int, field_name: str) -> str:
    return f"{PREFIX}.{layer}.{LAYER_KEY_SUFFIX[field_name]}"


NAMES = ReleaseNames(EMBEDDING_KEY, FINAL_NORM_KEY, OUTPUT_KEY, IGNORED_KEY_SUFFIXES, layer_key)


def weight_layout(config: CausalGLMConfig) -> WeightLayout:
    """Every key with its TP=1 shape and split; the logits come from ``output_layer``, not the embedding."""
    return causal_weight_layout(config, NAMES)


def release_spec(config: CausalGLMConfig) -> ReleaseSpec:
    """How the remote-code releases' files hold the layout (the INT4/INT8 releases included)."""
    return ReleaseSpec(weight_layout(config), release_summary(config), MODEL_KEY_PREFIXES, config.quantization_bit)
