"""Weights of any family: the layout a family declares, the typed container the graph reads, and assembling it.

A family's :class:`WeightLayout` names every tensor with its TP=1 shape and tensor-parallel split and says which
linears weight-only quantization applies to; a :class:`WeightReader` hands out one rank's tensors (floating point, or
``QuantizedWeight`` for quantized linears) from a checkpoint, files or memory; :meth:`ModelWeights.assemble` puts
them on the device in the runtime form the backend's op table prepares. See ``docs/families.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch

from glm_engine.errors import CheckpointError
from glm_engine.ops.interface import PackedLinear
from glm_engine.parallel.sharding import SplitRule, shard_shape
from glm_engine.quant.spec import QuantSpec
from glm_engine.quant.weight import QuantizedWeight

Progress = Callable[[int, int], None]
Prepare = Callable[[QuantizedWeight], PackedLinear]
Weight = torch.Tensor | QuantizedWeight


@dataclass
class LayerWeights:
    """One transformer layer; field order follows the forward pass. A family without a tensor (an RMSNorm's bias, a
    linear without bias, GLM-4-0414's extra norms elsewhere) leaves it None."""

    input_layernorm_weight: torch.Tensor
    query_key_value_weight: torch.Tensor  # [3h, h] per-head [q|k|v] (GLM), or [q heads | k groups | v groups]
    dense_weight: torch.Tensor  # [h, h]
    post_attention_layernorm_weight: torch.Tensor
    dense_h_to_4h_weight: torch.Tensor  # [inner, h], or [2*inner, h] for a GLU: the two halves
    dense_4h_to_h_weight: torch.Tensor  # [h, inner]
    input_layernorm_bias: torch.Tensor | None = None
    query_key_value_bias: torch.Tensor | None = None
    dense_bias: torch.Tensor | None = None
    post_attention_layernorm_bias: torch.Tensor | None = None
    dense_h_to_4h_bias: torch.Tensor | None = None
    dense_4h_to_h_bias: torch.Tensor | None = None
    post_self_attn_layernorm_weight: torch.Tensor | None = None  # GLM-4-0414: a norm on the attention's output
    post_mlp_layernorm_weight: torch.Tensor | None = None  # GLM-4-0414: a norm on the MLP's output


# LayerWeights field -> key suffix after ``transformer.layers.{i}.`` (SAT's names, which ChatGLM-6B kept).
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
# The four linears per layer weight-only quantization replaces (the reference's choice, in every family).
QUANTIZED_FIELDS = ("query_key_value_weight", "dense_weight", "dense_h_to_4h_weight", "dense_4h_to_h_weight")
# What every GLM-130B/ChatGLM-6B layer holds: all twelve LayerNorm/linear tensors with their biases.
SAT_LAYER_FIELDS = tuple(LAYER_KEY_SUFFIX)


def layer_key(layer: int, field_name: str) -> str:
    """SAT's name of a layer tensor (GLM-130B, ChatGLM-6B): ``transformer.layers.{i}.<suffix>``."""
    return f"transformer.layers.{layer}.{LAYER_KEY_SUFFIX[field_name]}"


def layer_parameter_shapes(hidden: int, h_to_4h_rows: int, inner: int) -> dict[str, tuple[int, ...]]:
    """One layer's LayerWeights fields with their TP=1 shapes; ``h_to_4h_rows`` is ``2 * inner`` for a GLU."""
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


@dataclass(frozen=True)
class WeightLayout:
    """Every tensor of one family's model: names, TP=1 shapes, splits, and what is quantizable."""

    shapes: dict[str, tuple[int, ...]]  # every key the model uses, with its TP=1 shape, in loading order
    split: Callable[[str], SplitRule]  # the tensor-parallel split of a key
    num_layers: int
    embedding_key: str
    final_norm_keys: tuple[str, ...]  # the final norm's weight, and its bias where it has one
    output_key: str | None = None  # a separate output matrix; None: the logits use the (tied) embedding
    ignored_suffixes: tuple[str, ...] = ()  # buffers some releases carry that are recomputed, never loaded
    layer_key: Callable[[int, str], str] = layer_key  # a layer's LayerWeights field -> its key
    layer_fields: tuple[str, ...] = SAT_LAYER_FIELDS  # the LayerWeights fields this family's layers hold

    @property
    def quantizable_keys(self) -> tuple[str, ...]:
        """The linears weight-only quantization applies to, layer by layer in forward order (the output matrix only
        when asked for, separately)."""
        return tuple(self.layer_key(n, f) for n in range(self.num_layers) for f in QUANTIZED_FIELDS)

    @property
    def quantizable(self) -> frozenset[str]:
        return frozenset(self.quantizable_keys)

    def shapes_at(self, tp: int) -> dict[str, tuple[int, ...]]:
        """Every key with its shape on one rank of TP degree ``tp``."""
        if tp == 1:
            return dict(self.shapes)
        return {key: shard_shape(self.split(key), shape, tp) for key, shape in self.shapes.items()}


@dataclass(frozen=True)
class ReadRequest:
    """What a reader is asked for: one rank's tensors, in which dtype and where, quantized how.

    Floating-point tensors come in ``dtype`` (None: as stored) on ``device``. ``quant`` quantizes the quantizable
    linears of a floating-point source on the rank's shard, from their fp16 values; ``output_quant`` does the same for
    a separate output matrix; a quantized source stays ``QuantizedWeight`` unless ``keep_quantized`` is False (then it
    is dequantized as the reference does).
    """

    rank: int = 0
    tp: int = 1
    dtype: torch.dtype | None = None
    device: torch.device | str = "cpu"
    quant: QuantSpec | None = None
    keep_quantized: bool = True
    output_quant: QuantSpec | None = None


class WeightReader(Protocol):
    """One rank's tensors of a model, from wherever its weights live (a checkpoint folder, files, memory)."""

    config: Any  # the config the weights were validated against
    description: str
    unused_keys: list[str]

    @property
    def stored_quant(self) -> QuantSpec | None:
        """How the stored linears are quantized; None for floating point."""

    def runtime_quant_specs(self, tp: int) -> list[QuantSpec]:
        """The formats the stored linears take on a rank of ``tp`` (re-sharding can make rowwise groupwise)."""

    def read(
        self, request: ReadRequest, keys: list[str] | None = None, progress: Progress | None = None
    ) -> dict[str, Weight]:
        """``request``'s tensors for ``keys`` (default: all); ``progress(done, total)`` follows them."""


@dataclass
class ModelWeights:
    """All parameters of a model, on one device: floating point in the compute dtype, quantized linears in the
    backend's runtime form."""

    word_embeddings: torch.Tensor  # [vocab (/ tp), h]
    layers: list[LayerWeights]
    final_layernorm_weight: torch.Tensor
    final_layernorm_bias: torch.Tensor | None  # None for an RMSNorm
    output: torch.Tensor | PackedLinear | None = None  # None: the tied embedding computes the logits
    unused_keys: list[str] = field(default_factory=list)  # keys of the source the model does not use
    layout: WeightLayout | None = field(default=None, repr=False)  # the names the weights were loaded under

    @property
    def logits_weight(self) -> torch.Tensor | PackedLinear:
        """The output projection ``[vocab (/ tp), h]``: a separate matrix, or the embedding itself."""
        return self.word_embeddings if self.output is None else self.output

    @classmethod
    def assemble(
        cls,
        layout: WeightLayout,
        tensors: Mapping[str, Weight],
        dtype: torch.dtype,
        device: torch.device | str,
        prepare: Prepare | None = None,
        output_quant: QuantSpec | None = None,
        unused_keys: Iterable[str] = (),
    ) -> ModelWeights:
        """The weights from one rank's ``tensors`` (a reader's result): floating point to ``dtype`` on ``device``,
        ``QuantizedWeight`` through ``prepare`` (a backend's ``OpTable.prepare_quantized``). With a tied output,
        ``output_quant`` adds a quantized copy of the embedding for the logits, made from its fp16 values (the
        lookup keeps the floating-point table)."""

        def take(key: str) -> torch.Tensor | PackedLinear:
            value = tensors[key]
            check_finite(key, value.scale if isinstance(value, QuantizedWeight) else value)
            if isinstance(value, QuantizedWeight):
                if prepare is None:
                    raise CheckpointError(f"{key} is quantized but no backend was given to run it")
                return prepare(value.to(device))
            return value.to(device=device, dtype=dtype).contiguous()

        missing = [k for k in layout.shapes if k not in tensors]
        if missing:
            raise CheckpointError(f"tensors missing while loading: {missing[:5]}")
        embeddings = take(layout.embedding_key)
        output = None  # tied (the reader handed the embedding itself as the output matrix): the embedding serves
        if layout.output_key is not None and tensors[layout.output_key] is not tensors[layout.embedding_key]:
            output = take(layout.output_key)
        if output is None and output_quant is not None:
            if prepare is None:
                raise CheckpointError("a quantized output projection needs a backend to run it (prepare)")
            output = prepare(quantized_copy(embeddings, output_quant))
        layers = [
            LayerWeights(**{name: take(layout.layer_key(n, name)) for name in layout.layer_fields})
            for n in range(layout.num_layers)
        ]
        final = [take(key) for key in layout.final_norm_keys]
        final_weight, final_bias = final[0], (final[1] if len(final) > 1 else None)
        return cls(embeddings, layers, final_weight, final_bias, output, list(unused_keys), layout)

    def state_dict(self) -> dict[str, Any]:
        """The weights under the names they were loaded under (quantized linears in their runtime form); a separate
        output matrix under its own name, a quantized copy of a tied embedding left out."""
        layout = self.layout
        if layout is None:
            raise CheckpointError("these weights were not assembled from a layout, so they have no names")
        out: dict[str, Any] = {layout.embedding_key: self.word_embeddings}
        for n, layer in enumerate(self.layers):
            out.update({layout.layer_key(n, name): getattr(layer, name) for name in layout.layer_fields})
        out.update(zip(layout.final_norm_keys, (self.final_layernorm_weight, self.final_layernorm_bias)))
        if layout.output_key is not None:
            out[layout.output_key] = self.logits_weight  # a tied output matrix is the embedding
        return out

    def nbytes(self) -> int:
        """Bytes of all weights in their runtime form (quantized linears at their packed size), the output
        projection included."""
        tensors = [self.word_embeddings, self.final_layernorm_weight, self.final_layernorm_bias, self.output]
        tensors += [getattr(layer, f.name) for layer in self.layers for f in fields(LayerWeights)]
        return sum(_nbytes(t) for t in tensors if t is not None)

    def held_bytes(self) -> int:
        """Bytes of memory the weights hold: each distinct storage once, so a tied output matrix counts once (a test-
        safe counter: it reads no process statistics)."""
        tensors = [self.word_embeddings, self.final_layernorm_weight, self.final_layernorm_bias, self.output]
        tensors += [getattr(layer, f.name) for layer in self.layers for f in fields(LayerWeights)]
        storages: dict[int, int] = {}
        packed = 0
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
            elif tensor is not None:
                packed += _nbytes(tensor)
        return sum(storages.values()) + packed

    def streamed_bytes(self) -> int:
        """Bytes a decode step reads: every weight in its runtime form, except an embedding table that is not also
        the output projection, of which a step reads one row per token."""
        total = self.nbytes()
        if self.output is not None:
            total -= _nbytes(self.word_embeddings)
        return total


def tie_output(tensors: dict[str, Weight], layout: WeightLayout) -> None:
    """Hold a separate output matrix once when it equals the embedding: ``tensors[output_key]`` becomes the embedding
    tensor itself (``assemble`` then ties them), and the duplicate is freed.

    ChatGLM-6B's release stores ``lm_head.weight`` beside ``word_embeddings.weight`` although transformers ties them,
    so a whole ``[vocab, h]`` table (1.07 GB in bf16) would be held twice. Compared after conversion, on the values
    the model computes with, so tying never changes a logit. A quantized output (``--quant-output``) is never tied.
    """
    if layout.output_key is None:
        return
    table, head = tensors.get(layout.embedding_key), tensors.get(layout.output_key)
    if not isinstance(table, torch.Tensor) or not isinstance(head, torch.Tensor) or head is table:
        return
    if (head.shape, head.dtype, head.device) == (table.shape, table.dtype, table.device) and torch.equal(head, table):
        tensors[layout.output_key] = table


def quantized_copy(table: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
    """A quantized copy of a tied embedding for the logits, made from its fp16 values (the lookup keeps the table)."""
    return QuantizedWeight.quantize(table.to(torch.float16), spec.bits, spec.group_size)


def _nbytes(tensor: torch.Tensor | PackedLinear) -> int:
    return tensor.nbytes if isinstance(tensor, PackedLinear) else tensor.numel() * tensor.element_size()


def scaled_noise(key: str, noise: torch.Tensor) -> torch.Tensor:
    """Standard-normal ``noise`` scaled for the parameter ``key``: norm gains 1 +- 0.2, biases 0.1, embedding
    rows 1, linears 1/sqrt(fan_in) (keeps activations O(1) through random layers)."""
    if key.endswith("norm.weight"):
        return 1.0 + 0.2 * noise
    if key.endswith("bias"):
        return 0.1 * noise
    if key.endswith(("word_embeddings.weight", "embed_tokens.weight")):
        return noise
    return noise / noise.shape[1] ** 0.5


def check_finite(key: str, tensor: torch.Tensor) -> None:
    """A CheckpointError naming ``key`` when a floating-point tensor holds NaN or infinity (a damaged checkpoint
    would otherwise load and generate garbage, or crash in sampling)."""
    if tensor.is_floating_point() and not _all_finite(tensor):
        bad = int((~torch.isfinite(tensor)).sum())
        raise CheckpointError(
            f"{key} holds {bad} NaN or infinite values of {tensor.numel()}: the checkpoint is damaged"
        )


# Elements checked at once: ``isfinite`` makes a bool per element (and temporaries), which for a whole embedding
# table would be a transient of half its size or more at the loading peak.
FINITE_CHUNK = 2**20


def _all_finite(tensor: torch.Tensor) -> bool:
    flat = tensor.reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + FINITE_CHUNK]).all()) for i in range(0, flat.numel(), FINITE_CHUNK))
