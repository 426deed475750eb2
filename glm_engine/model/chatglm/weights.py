"""ChatGLM-6B weights: the Hugging Face key names, shapes and tensor-parallel splits, and the release spec that
validation and the INT4/INT8 releases' stored form (``model/hf_release.py``) read.

Keys are those of ``THUDM/chatglm-6b``'s ``pytorch_model.bin.index.json``: GLM-130B's per-layer names
(``transformer.layers.{i}.attention.query_key_value.weight`` ...) plus ``lm_head.weight``, the output matrix, which
transformers ties to the embedding: a folder may leave it out (safetensors saving drops the tied copy), and one equal
to the embedding is held once (``weights.tie_output``).
``*.rotary_emb.inv_freq`` buffers are recomputed, never loaded (the reference ignores them too).

Quantized checkpoints (``THUDM/chatglm-6b-int4`` / ``-int8``, or ``model.quantize(bits)`` saved) replace a linear's
``weight`` by int8 values ``[out, in * bits / 8]`` (INT4: two per byte, the even column in the high nibble) and add
``weight_scale`` (fp16 ``[out]``); ``hf_release`` reads them.

Tensor parallelism (``docs/tensor-parallelism.md``) splits them as GLM-130B's, except that ``dense_h_to_4h`` is a plain
column-parallel linear (no GLU halves) and ``lm_head`` is column-parallel over the vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from glm_engine.checkpoint.hf import TensorInfo
from glm_engine.model.chatglm.config import ChatGLMConfig
from glm_engine.model.head_fingerprint import HeadFingerprint
from glm_engine.model.hf_release import LoadPlan, ReleaseSpec
from glm_engine.model.hf_release import plan_load as plan_release
from glm_engine.model.weights import WeightLayout, layer_key, layer_parameter_shapes, scaled_noise
from glm_engine.parallel.sharding import Split

EMBEDDING_KEY = "transformer.word_embeddings.weight"
FINAL_LN_KEYS = ("transformer.final_layernorm.weight", "transformer.final_layernorm.bias")
LM_HEAD_KEY = "lm_head.weight"
# Recomputed buffers the released files carry (modeling_chatglm.py's RotaryEmbedding ignores them on load).
IGNORED_KEY_SUFFIXES = (".rotary_emb.inv_freq",)
# The 2-D rotary gives each position half a head: inv_freq holds head_dim / 4 values; ChatGLM-6B has 32 heads.
HEAD_FINGERPRINT = HeadFingerprint(".rotary_emb.inv_freq", 4, {(4096, 28): ("ChatGLM-6B", 32)})
# Key prefixes that belong to the model: an unknown key under them means the config does not match the file.
MODEL_KEY_PREFIXES = ("transformer.", "lm_head.")
_ROW = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")
_COLUMN = (
    "attention.query_key_value.weight",
    "attention.query_key_value.bias",
    "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias",
    "word_embeddings.weight",
    LM_HEAD_KEY,
)


def split_of(key: str) -> Split:
    """How ``key`` is split across tensor-parallel ranks."""
    if key.endswith(_ROW):
        return Split.ROW
    if key.endswith(_COLUMN):
        return Split.COLUMN
    return Split.REPLICATED


def weight_layout(config: ChatGLMConfig) -> WeightLayout:
    """Every key with its TP=1 shape; the logits come from ``lm_head``, not the embedding."""
    return WeightLayout(
        parameter_shapes(config),
        split_of,
        config.num_layers,
        EMBEDDING_KEY,
        FINAL_LN_KEYS,
        LM_HEAD_KEY,
        IGNORED_KEY_SUFFIXES,
    )


def parameter_shapes(config: ChatGLMConfig) -> dict[str, tuple[int, ...]]:
    """Every expected key with its unquantized shape."""
    h, i = config.hidden_size, config.inner_hidden_size
    layer_shapes = layer_parameter_shapes(h, i, i)  # a plain MLP: no GeGLU halves
    shapes: dict[str, tuple[int, ...]] = {EMBEDDING_KEY: (config.vocab_size, h)}
    for layer in range(config.num_layers):
        for name, shape in layer_shapes.items():
            shapes[layer_key(layer, name)] = shape
    shapes.update({key: (h,) for key in FINAL_LN_KEYS})
    shapes[LM_HEAD_KEY] = (config.vocab_size, h)
    return shapes


def release_spec(config: ChatGLMConfig) -> ReleaseSpec:
    """How ``THUDM/chatglm-6b``'s files hold the layout (quantized releases included)."""
    summary = (
        f"the ChatGLM config ({config.num_layers} layers, hidden {config.hidden_size}, MLP {config.inner_hidden_size}, "
        f"vocab {config.vocab_size})"
    )
    return ReleaseSpec(
        weight_layout(config),
        summary,
        MODEL_KEY_PREFIXES,
        config.quantization_bit,
        output_may_be_absent=config.tie_word_embeddings,
    )


def plan_load(entries: Mapping[str, TensorInfo], config: ChatGLMConfig, source: str) -> LoadPlan:
    """Validate a checkpoint's keys, shapes and dtypes against ``config`` (``hf_release.plan_load``)."""
    return plan_release(entries, release_spec(config), source)


def random_state_dict(config: ChatGLMConfig, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Seeded random weights under the Hugging Face names that keep activations O(1) and greedy output varied.

    Embedding rows ~ N(0, 1); linears (lm_head too) ~ N(0, 1/fan_in); LayerNorm gains 1 +- 0.2; biases ~ N(0, 0.1).
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in parameter_shapes(config).items():
        out[key] = scaled_noise(key, torch.randn(shape, generator=gen)).to(dtype)
    return out
