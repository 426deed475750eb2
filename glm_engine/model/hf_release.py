"""A Hugging Face release's weight files against a family's layout: key validation that names every bad key with its
file, the INT4/INT8 releases' stored form, and tensors a release stores apart that the layout holds fused.

Quantized releases (``THUDM/chatglm-6b-int4``, ``chatglm2-6b-int4``, or ``model.quantize(bits)`` saved) replace a
linear's ``weight`` by int8 values ``[out, in * bits / 8]`` (INT4: two per byte, the even column in the high nibble) and
add ``weight_scale`` (``[out]``, the weight's float dtype). The bit width follows from the stored shape, so no flag is
needed; such a weight becomes a ``QuantizedWeight`` (:func:`canonical_state_dict`), run by the backend's kernels or
dequantized while loading exactly as the reference's extraction kernels do (:func:`dequantize_like_reference`).

Fused tensors: transformers' native GLM classes store ``q_proj``, ``k_proj`` and ``v_proj`` apart; the graph runs one
``[q | k | v]`` matrix, so the layout names a fused key whose parts the release spec lists (concatenated in order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from glm_engine.checkpoint.hf import TensorInfo
from glm_engine.errors import CheckpointError
from glm_engine.model.weights import WeightLayout
from glm_engine.quant.reference import dequantize, unpack_int4
from glm_engine.quant.weight import QuantizedWeight

# A quantized ``X.weight`` comes with ``X.weight_scale`` (quantization.py's QuantizedLinear / QuantizedEmbedding).
SCALE_SUFFIX = "_scale"


@dataclass(frozen=True)
class ReleaseSpec:
    """How one family's Hugging Face files hold its layout's tensors."""

    layout: WeightLayout
    summary: str  # the config in a phrase, for errors ("the ChatGLM config (28 layers, hidden 4096 ...)")
    model_prefixes: tuple[str, ...]  # an unknown key under these means the config does not match the files
    quantization_bit: int = 0  # what config.json says (0: nothing, or not said)
    # layout key -> (file key, rows) of each part, stacked on dim 0 in this order
    fused: Mapping[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)
    # the files may leave the output matrix out, the embedding serving as it (ChatGLM-6B: transformers ties
    # ``lm_head`` to the embedding, and its safetensors saving drops the tied copy)
    output_may_be_absent: bool = False

    def file_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every key the files must hold, with its unquantized shape (fused keys as their parts)."""
        out: dict[str, tuple[int, ...]] = {}
        for key, shape in self.layout.shapes.items():
            parts = self.fused.get(key)
            if parts is None:
                out[key] = shape
            else:
                out.update({part: (rows, *shape[1:]) for part, rows in parts})
        return out

    def members(self, key: str, quantized: Mapping[str, int]) -> list[str]:
        """The file keys the layout key ``key`` is built from (its parts, or itself and its scale)."""
        if key in self.fused:
            return [part for part, _ in self.fused[key]]
        return [key, key + SCALE_SUFFIX] if key in quantized else [key]


@dataclass
class LoadPlan:
    """The result of validating a checkpoint's key set: which keys are quantized (and how) and which are unused."""

    quantized_bits: dict[str, int]  # weight key -> 4 or 8
    unused_keys: list[str]
    tied_output: bool = False  # the output matrix is absent from the files: the embedding serves

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


def plan_load(entries: Mapping[str, TensorInfo], spec: ReleaseSpec, source: str) -> LoadPlan:
    """Validate keys, shapes and dtypes of a checkpoint against the release spec before anything heavy is read.

    Raises a CheckpointError listing every missing, unexpected and misshapen key (with the file it came from) and
    every inconsistency of a quantized checkpoint; returns which keys are quantized and which keys are unused.
    """
    expected = spec.file_shapes()
    present = {k: v for k, v in entries.items() if not k.endswith(spec.layout.ignored_suffixes)}
    scales = {k[: -len(SCALE_SUFFIX)]: v for k, v in present.items() if k.endswith(".weight" + SCALE_SUFFIX)}
    tensors = {k: v for k, v in present.items() if not k.endswith(".weight" + SCALE_SUFFIX)}
    missing = sorted(set(expected) - set(tensors))
    output, embedding = spec.layout.output_key, spec.layout.embedding_key
    tied = spec.output_may_be_absent and output in missing and embedding in tensors
    if tied:
        missing.remove(output)
    extra = sorted(set(tensors) - set(expected))
    unexpected = [f"{k} (in {tensors[k].file})" for k in extra if k.startswith(spec.model_prefixes)]
    unexpected += [f"{k}{SCALE_SUFFIX} (in {v.file})" for k, v in sorted(scales.items()) if k not in tensors]
    misshapen: list[str] = []
    quantized: dict[str, int] = {}
    for key in sorted(set(expected) & set(tensors)):
        problem = _check_tensor(key, tensors[key], expected[key], scales.get(key))
        if isinstance(problem, int):
            quantized[key] = problem
        elif problem is not None:
            misshapen.append(problem)
    _raise_problems(spec, source, missing, unexpected, misshapen)
    widths = sorted(set(quantized.values()))
    if len(widths) > 1:
        raise CheckpointError(f"{source} mixes INT4 and INT8 weights; the reference quantizes every linear alike")
    if widths and spec.quantization_bit and widths[0] != spec.quantization_bit:
        raise CheckpointError(
            f"{source}: config.json says quantization_bit {spec.quantization_bit} but the weights are "
            f"INT{widths[0]} (from their shapes); fix quantization_bit in config.json"
        )
    if quantized and set(quantized) - spec.layout.quantizable - {spec.layout.embedding_key, spec.layout.output_key}:
        odd = sorted(set(quantized) - spec.layout.quantizable)[:3]
        raise CheckpointError(f"{source}: {odd} are stored quantized, which no release of this family does")
    return LoadPlan(quantized, [k for k in extra if not k.startswith(spec.model_prefixes)], tied)


def _check_tensor(key: str, info: TensorInfo, want: tuple[int, ...], scale: TensorInfo | None) -> int | str | None:
    """The bit width of a valid quantized weight, a description of what is wrong, or None for a valid float."""
    if info.dtype == torch.int8 and scale is not None:
        bits = _quantized_bits(info, want)
        if bits is None:
            return (
                f"{key} in {info.file} is int8 {info.shape}, which is neither INT8 {want} nor INT4 "
                f"({want[0]}, {want[1] // 2})"
            )
        if scale.shape != (want[0],) or not scale.dtype.is_floating_point:
            return f"{key}{SCALE_SUFFIX} in {scale.file} is {scale.dtype} {scale.shape}, expected ({want[0]},) float"
        return bits
    if info.shape != want:
        return f"{key} in {info.file} is {info.shape}, expected {want}"
    if not info.dtype.is_floating_point:
        what = "without a weight_scale" if info.dtype == torch.int8 else ""
        return f"{key} in {info.file} is {info.dtype} {what}".rstrip() + ", expected floating point"
    return None


def _raise_problems(
    spec: ReleaseSpec, source: str, missing: list[str], unexpected: list[str], misshapen: list[str]
) -> None:
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)):
        if items:
            shown = "; ".join(items[:8]) + (f" ... ({len(items) - 8} more)" if len(items) > 8 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise CheckpointError(
            f"{source} does not match {spec.summary}: " + " | ".join(problems) + ". Check config.json against the "
            "weight files."
        )


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


def release_values(stored: torch.Tensor, bits: int) -> torch.Tensor:
    """Unpacked int8 values of a release's stored weight (INT4: two per byte, even column high)."""
    return unpack_int4(stored) if bits == 4 else stored.to(torch.int8)


def canonical_state_dict(
    tensors: Mapping[str, torch.Tensor], quantized_bits: Mapping[str, int], spec: ReleaseSpec | None = None
) -> dict[str, torch.Tensor | QuantizedWeight]:
    """A release's tensors under the layout's keys: each stored INT4/INT8 weight and its ``weight_scale`` made one
    ``QuantizedWeight`` (``quantized_bits`` from :func:`plan_load`), fused parts stacked; keys the model does not use
    are dropped. ``tensors`` must hold every part of a fused key it holds any of."""
    ignored = spec.layout.ignored_suffixes if spec is not None else ()
    part_of = {part: key for key, parts in (spec.fused if spec else {}).items() for part, _ in parts}
    out: dict[str, torch.Tensor | QuantizedWeight] = {}
    for key, value in tensors.items():
        if key.endswith(".weight" + SCALE_SUFFIX) or (ignored and key.endswith(ignored)):
            continue
        if key in part_of:
            fused = part_of[key]
            if fused not in out:
                out[fused] = torch.cat([tensors[part] for part in spec.members(fused, {})], dim=0)
            continue
        bits = quantized_bits.get(key)
        if bits is not None:
            values = release_values(value, bits)
            out[key] = QuantizedWeight.from_values(values, tensors[key + SCALE_SUFFIX], bits)
        else:
            out[key] = value
    return out


def dequantize_stored(weight: QuantizedWeight, dtype: torch.dtype) -> torch.Tensor:
    """A quantized weight dequantized as the reference's kernels do for ``dtype`` (see
    :func:`dequantize_like_reference`)."""
    return dequantize_like_reference(weight.stored, weight.scale[:, 0], weight.bits, dtype)
