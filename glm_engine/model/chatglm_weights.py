"""ChatGLM-6B weights: the Hugging Face key names and shapes, validation that names every bad key with its file,
quantized-checkpoint detection, and the typed container the graph reads.

Keys are those of ``THUDM/chatglm-6b``'s ``pytorch_model.bin.index.json``: GLM-130B's per-layer names
(``transformer.layers.{i}.attention.query_key_value.weight`` ...) plus ``lm_head.weight``, a separate output matrix.
``*.rotary_emb.inv_freq`` buffers are recomputed, never loaded (the reference ignores them too).

Quantized checkpoints (``THUDM/chatglm-6b-int4`` / ``-int8``, or ``model.quantize(bits)`` saved) replace a linear's
``weight`` by int8 values ``[out, in * bits / 8]`` (INT4: two per byte, the even column in the high nibble) and add
``weight_scale`` (fp16 ``[out]``). The bit width follows from the stored shape, so no flag is needed; the weights
are dequantized once, while loading, exactly as the reference's extraction kernels do
(:func:`dequantize_like_reference`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields

import torch

from glm_engine.errors import CheckpointError
from glm_engine.model.chatglm_config import ChatGLMConfig
from glm_engine.model.weights import LayerWeights, layer_key, layer_parameter_shapes, scaled_noise
from glm_engine.ops.interface import PackedLinear
from glm_engine.quant.reference import dequantize, unpack_int4
from glm_engine.quant.weight import QuantizedWeight

EMBEDDING_KEY = "transformer.word_embeddings.weight"
FINAL_LN_KEYS = ("transformer.final_layernorm.weight", "transformer.final_layernorm.bias")
LM_HEAD_KEY = "lm_head.weight"
# Recomputed buffers the released files carry (modeling_chatglm.py's RotaryEmbedding ignores them on load).
IGNORED_KEY_SUFFIXES = (".rotary_emb.inv_freq",)
# A quantized ``X.weight`` comes with ``X.weight_scale`` (quantization.py's QuantizedLinear / QuantizedEmbedding).
SCALE_SUFFIX = "_scale"
# Key prefixes that belong to the model: an unknown key under them means the config does not match the file.
MODEL_KEY_PREFIXES = ("transformer.", "lm_head.")

ShardSource = Iterable[tuple[str, Mapping[str, torch.Tensor]]]


@dataclass(frozen=True)
class TensorInfo:
    """What a checkpoint says about one tensor before it is read: its shape, dtype and the file holding it."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    file: str


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


@dataclass
class LoadPlan:
    """The result of validating a checkpoint's key set: which keys are quantized (and how) and which are unused."""

    quantized_bits: dict[str, int]  # weight key -> 4 or 8
    unused_keys: list[str]

    @property
    def bits(self) -> int:
        """The checkpoint's weight bit width: 0 (floating point), 4 or 8."""
        return next(iter(self.quantized_bits.values()), 0)


def _quantized_bits(info: TensorInfo, expected: tuple[int, ...]) -> int | None:
    """4 or 8 from the stored int8 shape of a weight expected as ``[out, in]``; None if it fits neither."""
    out, columns = expected
    if len(info.shape) != 2 or info.shape[0] != out:
        return None
    if info.shape[1] == columns:
        return 8
    if info.shape[1] * 2 == columns:
        return 4
    return None


def plan_load(entries: Mapping[str, TensorInfo], config: ChatGLMConfig, source: str) -> LoadPlan:
    """Validate keys, shapes and dtypes of a checkpoint against ``config`` before anything heavy is read.

    Raises a CheckpointError listing every missing, unexpected and misshapen key (with the file it came from) and
    every inconsistency of a quantized checkpoint; returns which keys are quantized and which keys are unused.
    """
    expected = parameter_shapes(config)
    present = {k: v for k, v in entries.items() if not k.endswith(IGNORED_KEY_SUFFIXES)}
    scales = {k[: -len(SCALE_SUFFIX)]: v for k, v in present.items() if k.endswith(".weight" + SCALE_SUFFIX)}
    tensors = {k: v for k, v in present.items() if not k.endswith(".weight" + SCALE_SUFFIX)}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    unexpected = [f"{k} (in {tensors[k].file})" for k in extra if k.startswith(MODEL_KEY_PREFIXES)]
    unexpected += [f"{k}{SCALE_SUFFIX} (in {v.file})" for k, v in sorted(scales.items()) if k not in tensors]
    misshapen: list[str] = []
    quantized: dict[str, int] = {}
    for key in sorted(set(expected) & set(tensors)):
        info, want = tensors[key], expected[key]
        if info.dtype == torch.int8 and key in scales:
            bits = _quantized_bits(info, want)
            scale = scales[key]
            if bits is None:
                misshapen.append(
                    f"{key} in {info.file} is int8 {info.shape}, which is neither INT8 {want} nor INT4 "
                    f"({want[0]}, {want[1] // 2})"
                )
            elif scale.shape != (want[0],) or not scale.dtype.is_floating_point:
                shown = f"{scale.dtype} {scale.shape}"
                misshapen.append(f"{key}{SCALE_SUFFIX} in {scale.file} is {shown}, expected ({want[0]},) float")
            else:
                quantized[key] = bits
        elif info.shape != want:
            misshapen.append(f"{key} in {info.file} is {info.shape}, expected {want}")
        elif not info.dtype.is_floating_point:
            what = "without a weight_scale" if info.dtype == torch.int8 else ""
            misshapen.append(f"{key} in {info.file} is {info.dtype} {what}".rstrip() + ", expected floating point")
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)):
        if items:
            shown = "; ".join(items[:8]) + (f" ... ({len(items) - 8} more)" if len(items) > 8 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise CheckpointError(
            f"{source} does not match the ChatGLM config ({config.num_layers} layers, hidden {config.hidden_size}, "
            f"MLP {config.inner_hidden_size}, vocab {config.vocab_size}): "
            + " | ".join(problems)
            + ". Check config.json against the weight files."
        )
    widths = sorted(set(quantized.values()))
    if len(widths) > 1:
        raise CheckpointError(f"{source} mixes INT4 and INT8 weights; the reference quantizes every linear alike")
    if widths and config.quantization_bit and widths[0] != config.quantization_bit:
        raise CheckpointError(
            f"{source}: config.json says quantization_bit {config.quantization_bit} but the weights are "
            f"INT{widths[0]} (from their shapes); fix quantization_bit in config.json"
        )
    return LoadPlan(quantized, [k for k in extra if not k.startswith(MODEL_KEY_PREFIXES)])


def dequantize_like_reference(stored: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """The float weight the reference computes with, from int8 values (INT4 packed) and the per-row scale.

    fp16: the CUDA extraction kernels' ``half(q) * scale``, one fp16 rounding (``quant.reference.dequantize``).
    fp32 (and fp64): the CPU kernels ``extract_int{4,8}_weight_to_float``, ``float(scale) * q``, which is exact.
    bf16: that exact product rounded once to bf16.
    """
    if dtype == torch.float16:
        return dequantize(stored, scale, bits, torch.float16)
    values = unpack_int4(stored) if bits == 4 else stored
    work = torch.float64 if dtype == torch.float64 else torch.float32
    return (values.to(work) * scale.to(work)[:, None]).to(dtype)


@dataclass
class ChatGLMWeights:
    """All parameters of a ChatGLM model, on one device in one dtype (quantized ones already dequantized)."""

    word_embeddings: torch.Tensor  # [vocab, h]
    layers: list[LayerWeights]  # dense_h_to_4h is [inner, h] here (no GeGLU halves)
    final_layernorm_weight: torch.Tensor
    final_layernorm_bias: torch.Tensor
    lm_head: torch.Tensor  # [vocab, h], not tied to the embedding
    unused_keys: list[str] = field(default_factory=list)
    quantization_bits: int = 0  # the checkpoint's storage (0 = floating point); the compute is in the run dtype

    @classmethod
    def from_shards(
        cls,
        shards: ShardSource,
        plan: LoadPlan,
        config: ChatGLMConfig,
        dtype: torch.dtype,
        device: torch.device | str,
        progress: Callable[[int, int], None] | None = None,
        prepare: Callable[[QuantizedWeight], PackedLinear] | None = None,
        quant: tuple[int, int | None] | None = None,
        output_quant: tuple[int, int | None] | None = None,
    ) -> ChatGLMWeights:
        """Convert each shard's tensors to ``dtype`` on ``device`` as the shard arrives, so host RAM holds one source
        shard plus the converted weights. ``plan`` comes from :func:`plan_load` on the same checkpoint.

        With ``prepare`` (a backend's ``OpTable.prepare_quantized``), a quantized release's linears stay quantized,
        and ``quant = (bits, group_size)`` quantizes floating-point linears from their fp16 values; without it,
        quantized linears are dequantized like the reference. ``output_quant = (bits, group_size)`` quantizes
        ``lm_head`` too (the reference keeps it fp16; chatglm.cpp quantizes it)."""
        quantizable = set(quantizable_keys(config))
        expected = parameter_shapes(config)
        done: dict[str, torch.Tensor] = {}
        pending: dict[str, torch.Tensor] = {}  # quantized weights or scales waiting for their partner shard

        def place(key: str, tensor: torch.Tensor) -> None:
            done[key] = tensor
            if progress is not None:
                progress(len(done), len(expected))

        for _file, shard in shards:
            for key in shard:
                base = key[: -len(SCALE_SUFFIX)] if key.endswith(".weight" + SCALE_SUFFIX) else key
                if base not in expected or base in done:
                    continue
                if base not in plan.quantized_bits:
                    spec = quant if key in quantizable else output_quant if key == LM_HEAD_KEY else None
                    if spec is not None and prepare is not None:
                        weight = QuantizedWeight.quantize(shard[key].to(device, torch.float16), *spec)
                        place(key, prepare(weight))
                    else:
                        place(key, shard[key].to(device=device, dtype=dtype).contiguous())
                    continue
                pending[key] = shard[key].to(device)
                weight, scale = pending.get(base), pending.get(base + SCALE_SUFFIX)
                if weight is not None and scale is not None:
                    bits = plan.quantized_bits[base]
                    if prepare is not None and base in quantizable:
                        place(base, prepare(QuantizedWeight.from_values(release_values(weight, bits), scale, bits)))
                    else:
                        place(base, dequantize_like_reference(weight, scale, bits, dtype))
                    del pending[base], pending[base + SCALE_SUFFIX]
        absent = [k for k in expected if k not in done]
        if absent:  # plan_load saw these keys, so a file changed or an index lied about where they are
            raise CheckpointError(f"tensors listed by the checkpoint were not found while loading: {absent[:5]}")
        layers = [
            LayerWeights(**{f.name: done[layer_key(n, f.name)] for f in fields(LayerWeights)})
            for n in range(config.num_layers)
        ]
        return cls(
            done[EMBEDDING_KEY],
            layers,
            done[FINAL_LN_KEYS[0]],
            done[FINAL_LN_KEYS[1]],
            done[LM_HEAD_KEY],
            plan.unused_keys,
            plan.bits,
        )

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        config: ChatGLMConfig,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        source: str = "state dict",
    ) -> ChatGLMWeights:
        """Validate and convert an in-memory state dict (tests, the golden file, random weights)."""
        entries = {k: TensorInfo(tuple(v.shape), v.dtype, source) for k, v in state_dict.items()}
        plan = plan_load(entries, config, source)
        return cls.from_shards([(source, state_dict)], plan, config, dtype, device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The (dequantized) weights under their Hugging Face key names."""
        out = {EMBEDDING_KEY: self.word_embeddings}
        for n, layer in enumerate(self.layers):
            out.update({layer_key(n, f.name): getattr(layer, f.name) for f in fields(LayerWeights)})
        out[FINAL_LN_KEYS[0]], out[FINAL_LN_KEYS[1]] = self.final_layernorm_weight, self.final_layernorm_bias
        out[LM_HEAD_KEY] = self.lm_head
        return out

    def nbytes(self) -> int:
        """Bytes of all weights in their runtime form (quantized linears at their packed size)."""
        return sum(
            t.nbytes if isinstance(t, PackedLinear) else t.numel() * t.element_size()
            for t in self.state_dict().values()
        )


def release_values(stored: torch.Tensor, bits: int) -> torch.Tensor:
    """Unpacked int8 values of a release's stored weight (INT4: two per byte, even column high)."""
    return unpack_int4(stored) if bits == 4 else stored.to(torch.int8)


def quantizable_keys(config: ChatGLMConfig) -> list[str]:
    """The linear weights the reference's ``quantize()`` replaces: QKV, dense, h->4h and 4h->h of every layer."""
    names = ("query_key_value_weight", "dense_weight", "dense_h_to_4h_weight", "dense_4h_to_h_weight")
    return [layer_key(n, name) for n in range(config.num_layers) for name in names]


def random_state_dict(config: ChatGLMConfig, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Seeded random weights under the Hugging Face names that keep activations O(1) and greedy output varied.

    Embedding rows ~ N(0, 1); linears (lm_head too) ~ N(0, 1/fan_in); LayerNorm gains 1 +- 0.2; biases ~ N(0, 0.1).
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in parameter_shapes(config).items():
        out[key] = scaled_noise(key, torch.randn(shape, generator=gen)).to(dtype)
    return out
