"""GLM weights: the reference's state-dict names and shapes, a typed container, and seeded random weights.

Names are SwissArmyTransformer's (``transformer.layers.{i}.attention.query_key_value.weight`` ...), used unchanged by
the native format too, so a SAT state dict and ours are the same thing (glm130b.md section 2.2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

import torch

from glm_engine.config import GLMConfig
from glm_engine.errors import CheckpointError
from glm_engine.ops.interface import PackedLinear
from glm_engine.parallel.sharding import shard_shape
from glm_engine.quant.weight import QuantizedWeight

EMBEDDING_KEY = "transformer.word_embeddings.weight"
FINAL_LN_KEYS = ("transformer.final_layernorm.weight", "transformer.final_layernorm.bias")
# Buffers some releases carry that are recomputed, never loaded (glm130b.md section 2.2).
IGNORED_KEY_SUFFIXES = (".rotary_emb.inv_freq",)
# The four linears per layer the reference quantizes (glm130b.md section 3.1); everything else stays floating point.
QUANTIZED_SUFFIXES = (
    "attention.query_key_value.weight",
    "attention.dense.weight",
    "mlp.dense_h_to_4h.weight",
    "mlp.dense_4h_to_h.weight",
)


def is_quantized_key(key: str) -> bool:
    """Whether ``key`` is one of the linears weight-only quantization applies to."""
    return key.startswith("transformer.layers.") and key.endswith(QUANTIZED_SUFFIXES)


def quantize_linears(
    state_dict: Mapping[str, torch.Tensor | QuantizedWeight], bits: int, group_size: int | None
) -> dict[str, torch.Tensor | QuantizedWeight]:
    """The state dict with its floating-point linears quantized (from their fp16 values, as the reference does)."""
    return {
        k: QuantizedWeight.quantize(v, bits, group_size) if is_quantized_key(k) and isinstance(v, torch.Tensor) else v
        for k, v in state_dict.items()
    }


@dataclass
class LayerWeights:
    """One transformer layer; field order follows the forward pass."""

    input_layernorm_weight: torch.Tensor
    input_layernorm_bias: torch.Tensor
    query_key_value_weight: torch.Tensor  # [3h, h], rows head-major: head*3d + {q,k,v}*d + i
    query_key_value_bias: torch.Tensor
    dense_weight: torch.Tensor  # [h, h]
    dense_bias: torch.Tensor
    post_attention_layernorm_weight: torch.Tensor
    post_attention_layernorm_bias: torch.Tensor
    dense_h_to_4h_weight: torch.Tensor  # [2*inner, h]: first half linear, second half gate
    dense_h_to_4h_bias: torch.Tensor
    dense_4h_to_h_weight: torch.Tensor  # [h, inner]
    dense_4h_to_h_bias: torch.Tensor


# LayerWeights field -> key suffix after ``transformer.layers.{i}.``
LAYER_KEY_SUFFIX = {
    "input_layernorm_weight": "input_layernorm.weight",
    "input_layernorm_bias": "input_layernorm.bias",
    "query_key_value_weight": "attention.query_key_value.weight",
    "query_key_value_bias": "attention.query_key_value.bias",
    "dense_weight": "attention.dense.weight",
    "dense_bias": "attention.dense.bias",
    "post_attention_layernorm_weight": "post_attention_layernorm.weight",
    "post_attention_layernorm_bias": "post_attention_layernorm.bias",
    "dense_h_to_4h_weight": "mlp.dense_h_to_4h.weight",
    "dense_h_to_4h_bias": "mlp.dense_h_to_4h.bias",
    "dense_4h_to_h_weight": "mlp.dense_4h_to_h.weight",
    "dense_4h_to_h_bias": "mlp.dense_4h_to_h.bias",
}


def layer_key(layer: int, field_name: str) -> str:
    return f"transformer.layers.{layer}.{LAYER_KEY_SUFFIX[field_name]}"


def layer_parameter_shapes(hidden: int, h_to_4h_rows: int, inner: int) -> dict[str, tuple[int, ...]]:
    """One layer's LayerWeights fields with their TP=1 shapes; ``h_to_4h_rows`` is ``2 * inner`` for GeGLU."""
    h = hidden
    return {
        "input_layernorm_weight": (h,),
        "input_layernorm_bias": (h,),
        "query_key_value_weight": (3 * h, h),
        "query_key_value_bias": (3 * h,),
        "dense_weight": (h, h),
        "dense_bias": (h,),
        "post_attention_layernorm_weight": (h,),
        "post_attention_layernorm_bias": (h,),
        "dense_h_to_4h_weight": (h_to_4h_rows, h),
        "dense_h_to_4h_bias": (h_to_4h_rows,),
        "dense_4h_to_h_weight": (h, inner),
        "dense_4h_to_h_bias": (h,),
    }


def parameter_shapes(config: GLMConfig, tp: int = 1) -> dict[str, tuple[int, ...]]:
    """Every expected state-dict key with its shape on one rank of tensor-parallel degree ``tp``."""
    h = config.hidden_size
    layer_shapes = layer_parameter_shapes(h, 2 * config.inner_hidden_size, config.inner_hidden_size)
    shapes: dict[str, tuple[int, ...]] = {EMBEDDING_KEY: (config.vocab_size, h)}
    for layer in range(config.num_layers):
        for name, shape in layer_shapes.items():
            shapes[layer_key(layer, name)] = shape
    shapes.update({key: (h,) for key in FINAL_LN_KEYS})
    if tp == 1:
        return shapes
    return {key: shard_shape(key, shape, tp) for key, shape in shapes.items()}


def check_state_dict(state_dict: Mapping[str, torch.Tensor], config: GLMConfig, source: str, tp: int = 1) -> list[str]:
    """Raise CheckpointError naming every missing, unexpected, misshapen and non-float key; return the keys left
    unused (see ``checkpoint.layout.validate``, which checks files the same way from their metadata)."""
    from glm_engine.checkpoint.layout import infos_of, validate  # layout builds on this module's key names

    return validate(infos_of(state_dict), config, tp, None, source)


@dataclass
class GLMWeights:
    """All parameters of a GLM model, as tensors on one device in one dtype."""

    word_embeddings: torch.Tensor  # [vocab, h], also the tied output projection
    layers: list[LayerWeights]
    final_layernorm_weight: torch.Tensor
    final_layernorm_bias: torch.Tensor
    unused_keys: list[str] = field(default_factory=list)  # keys of the source the model does not use
    # A quantized copy of the embedding for the logits (``quant_output``); None = the tied embedding itself.
    output_projection: PackedLinear | None = None

    @property
    def output(self) -> torch.Tensor | PackedLinear:
        """The output projection ``[vocab, h]``: the tied embedding, or its quantized copy."""
        return self.word_embeddings if self.output_projection is None else self.output_projection

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        config: GLMConfig,
        dtype: torch.dtype,
        device: torch.device | str,
        source: str = "state dict",
        progress: Callable[[int, int], None] | None = None,
        tp: int = 1,
        prepare: Callable[[QuantizedWeight], PackedLinear] | None = None,
        output_quant: tuple[int, int | None] | None = None,
    ) -> GLMWeights:
        """Validate, then convert each tensor to ``dtype`` on ``device`` one at a time (no second full copy).

        ``state_dict`` holds one rank's shards when ``tp > 1``. ``progress(done, total)`` is called after each
        tensor, for a progress bar on long loads. ``output_quant = (bits, group_size)`` adds a quantized copy of the
        embedding for the logits (the lookup keeps the floating-point table), made by ``prepare``.
        """
        unused = check_state_dict(state_dict, config, source, tp)
        total, done = len(parameter_shapes(config)), 0

        def take(key: str) -> torch.Tensor | PackedLinear:
            nonlocal done
            value = state_dict[key]
            if isinstance(value, QuantizedWeight):
                if prepare is None:
                    raise CheckpointError(f"{source}: {key} is quantized but no backend was given to run it")
                tensor = prepare(value.to(device))
            else:
                tensor = value.to(device=device, dtype=dtype).contiguous()
            done += 1
            if progress is not None:
                progress(done, total)
            return tensor

        embeddings = take(EMBEDDING_KEY)
        output = None
        if output_quant is not None:
            if prepare is None:
                raise CheckpointError("a quantized output projection needs a backend to run it (prepare)")
            output = prepare(QuantizedWeight.quantize(embeddings.to(torch.float16), *output_quant))
        layers = [
            LayerWeights(**{f.name: take(layer_key(n, f.name)) for f in fields(LayerWeights)})
            for n in range(config.num_layers)
        ]
        return cls(embeddings, layers, take(FINAL_LN_KEYS[0]), take(FINAL_LN_KEYS[1]), unused, output)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under their reference key names."""
        out = {EMBEDDING_KEY: self.word_embeddings}
        for n, layer in enumerate(self.layers):
            out.update({layer_key(n, f.name): getattr(layer, f.name) for f in fields(LayerWeights)})
        out[FINAL_LN_KEYS[0]], out[FINAL_LN_KEYS[1]] = self.final_layernorm_weight, self.final_layernorm_bias
        return out

    def nbytes(self) -> int:
        """Bytes of all weights in their runtime form (quantized linears at their packed size), the quantized
        output projection included."""
        tensors = [
            *self.state_dict().values(),
            *([self.output_projection] if self.output_projection is not None else []),
        ]
        return sum(t.nbytes if isinstance(t, PackedLinear) else t.numel() * t.element_size() for t in tensors)


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


def scaled_noise(key: str, noise: torch.Tensor) -> torch.Tensor:
    """Standard-normal ``noise`` scaled for the parameter ``key``: LayerNorm gains 1 +- 0.2, biases 0.1, embedding
    rows 1, linears 1/sqrt(fan_in) (keeps activations O(1) through random layers)."""
    if key.endswith("layernorm.weight"):
        return 1.0 + 0.2 * noise
    if key.endswith("bias"):
        return 0.1 * noise
    if key.endswith("word_embeddings.weight"):
        return noise
    return noise / noise.shape[1] ** 0.5
