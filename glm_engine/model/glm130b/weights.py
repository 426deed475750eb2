"""GLM-130B's weights: the reference's state-dict names and shapes, their tensor-parallel splits, and random weights.

Names are SwissArmyTransformer's (``transformer.layers.{i}.attention.query_key_value.weight`` ...), used unchanged by
the native format too, so a SAT state dict and ours are the same thing (``docs/checkpoints.md``). The splits are the
reference's (``docs/tensor-parallelism.md``): QKV, ``dense_h_to_4h`` (GLU-aware: linear and gate halves split apart)
and the word embedding column-parallel; ``attention.dense`` and ``dense_4h_to_h`` row-parallel; LayerNorms replicated.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from glm_engine.model.glm130b.config import GLMConfig
from glm_engine.model.head_fingerprint import HeadFingerprint
from glm_engine.model.weights import WeightLayout, layer_key, layer_parameter_shapes, scaled_noise
from glm_engine.parallel.sharding import Split
from glm_engine.quant.weight import QuantizedWeight

EMBEDDING_KEY = "transformer.word_embeddings.weight"
FINAL_LN_KEYS = ("transformer.final_layernorm.weight", "transformer.final_layernorm.bias")
# Buffers some releases carry that are recomputed, never loaded.
IGNORED_KEY_SUFFIXES = (".rotary_emb.inv_freq",)
# The 1-D rotary covers whole heads: inv_freq holds head_dim / 2 values; GLM-130B's release has 96 heads.
HEAD_FINGERPRINT = HeadFingerprint(".rotary_emb.inv_freq", 2, {(12288, 70): ("GLM-130B", 96)})
# The four linears per layer the reference quantizes; everything else stays floating point.
QUANTIZED_SUFFIXES = (
    "attention.query_key_value.weight",
    "attention.dense.weight",
    "mlp.dense_h_to_4h.weight",
    "mlp.dense_4h_to_h.weight",
)
_ROW = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")
_GLU = ("mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias")
_COLUMN = ("attention.query_key_value.weight", "attention.query_key_value.bias", "word_embeddings.weight")


def split_of(key: str) -> Split:
    """How the reference splits ``key`` across tensor-parallel ranks."""
    if key.endswith(_ROW):
        return Split.ROW
    if key.endswith(_GLU):
        return Split.GLU_COLUMN
    if key.endswith(_COLUMN):
        return Split.COLUMN
    return Split.REPLICATED


def is_quantized_key(key: str) -> bool:
    """Whether ``key`` is one of the linears weight-only quantization applies to."""
    return key.startswith("transformer.layers.") and key.endswith(QUANTIZED_SUFFIXES)


def weight_layout(config: GLMConfig) -> WeightLayout:
    """Every key with its TP=1 shape; the output projection is the tied embedding."""
    h = config.hidden_size
    layer_shapes = layer_parameter_shapes(h, 2 * config.inner_hidden_size, config.inner_hidden_size)
    shapes: dict[str, tuple[int, ...]] = {EMBEDDING_KEY: (config.vocab_size, h)}
    for layer in range(config.num_layers):
        for name, shape in layer_shapes.items():
            shapes[layer_key(layer, name)] = shape
    shapes.update({key: (h,) for key in FINAL_LN_KEYS})
    return WeightLayout(shapes, split_of, config.num_layers, EMBEDDING_KEY, FINAL_LN_KEYS, None, IGNORED_KEY_SUFFIXES)


def parameter_shapes(config: GLMConfig, tp: int = 1) -> dict[str, tuple[int, ...]]:
    """Every expected state-dict key with its shape on one rank of tensor-parallel degree ``tp``."""
    return weight_layout(config).shapes_at(tp)


def quantize_linears(
    state_dict: Mapping[str, torch.Tensor | QuantizedWeight], bits: int, group_size: int | None
) -> dict[str, torch.Tensor | QuantizedWeight]:
    """The state dict with its floating-point linears quantized (from their fp16 values, as the reference does)."""
    return {
        k: QuantizedWeight.quantize(v, bits, group_size) if is_quantized_key(k) and isinstance(v, torch.Tensor) else v
        for k, v in state_dict.items()
    }


def random_state_dict(config: GLMConfig, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Seeded random weights that keep activations O(1) and give non-trivial greedy output.

    Embedding rows ~ N(0, 1); each linear ~ N(0, 1/fan_in); layer LayerNorm gains 1 +- 0.2; biases ~ N(0, 0.1).
    The final LayerNorm gain is N(0, 1) with random signs: with a tied output embedding and the DeepNorm residual,
    gains near 1 make "repeat the input token" the model's fixed point, and larger linear weights instead make an
    fp16 model chaotic. Random signs break the fixed point without amplifying rounding noise.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in parameter_shapes(config).items():
        noise = torch.randn(shape, generator=gen)
        out[key] = (noise if key == FINAL_LN_KEYS[0] else scaled_noise(key, noise)).to(dtype)
    return out
