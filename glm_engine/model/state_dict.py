"""A whole (TP=1) state dict in memory as a :class:`~glm_engine.model.weights.WeightReader`.

Random preset weights, tests and tools hold every tensor at once; each rank's shard is cut from them on request, one
tensor at a time, by the family's split rules, and quantized on that shard as a checkpoint rank would be.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from glm_engine.model.weights import QUANTIZED_FIELDS, Progress, ReadRequest, Weight, WeightLayout, tie_output
from glm_engine.parallel.sharding import Split, shard
from glm_engine.quant.sharding import shard_quantized, target_row_group
from glm_engine.quant.spec import QuantSpec
from glm_engine.quant.weight import QuantizedWeight

Dequantize = Callable[[QuantizedWeight, torch.dtype], torch.Tensor]


def dequantize_in_fp16(weight: QuantizedWeight, dtype: torch.dtype) -> torch.Tensor:
    """The reference's extraction kernel, ``half(q) * scale``, then cast to ``dtype``."""
    return weight.dequantize(torch.float16).to(dtype)


class StateDictReader:
    """Hands out rank shards of a full state dict (floats, or ``QuantizedWeight`` for quantized linears)."""

    def __init__(
        self,
        layout: WeightLayout,
        state_dict: Mapping[str, Weight],
        description: str,
        unused_keys: Iterable[str] = (),
        dequantize: Dequantize = dequantize_in_fp16,
        config: object = None,
    ) -> None:
        self.layout = layout
        self.config = config
        self.state_dict = state_dict
        self.description = description
        self.unused_keys = list(unused_keys)
        self.dequantize = dequantize

    @property
    def stored_quant(self) -> QuantSpec | None:
        for key in sorted(self.layout.quantizable):
            value = self.state_dict.get(key)
            if isinstance(value, QuantizedWeight):
                return QuantSpec(value.bits, None if value.groups == 1 else value.group_size)
        return None

    def runtime_quant_specs(self, tp: int) -> list[QuantSpec]:
        """The stored format, except that a row-parallel weight's groups cannot be wider than a rank's slice."""
        stored = self.stored_quant
        if stored is None:
            return []
        specs = [stored]
        for key in self.layout.quantizable_keys[: len(QUANTIZED_FIELDS)]:  # every layer is quantized alike
            if self.layout.split(key) is not Split.ROW:
                continue
            columns = self.layout.shapes[key][1]
            group = target_row_group(columns, stored.group_size or columns, 1, tp)
            spec = QuantSpec(stored.bits, None if group == columns // tp and stored.group_size is None else group)
            if spec not in specs:
                specs.append(spec)
        return specs

    def read(
        self, request: ReadRequest, keys: list[str] | None = None, progress: Progress | None = None
    ) -> dict[str, Weight]:
        wanted = list(self.layout.shapes) if keys is None else keys
        quantize = {key: request.quant for key in self.layout.quantizable} if request.quant is not None else {}
        if request.output_quant is not None and self.layout.output_key is not None:
            quantize[self.layout.output_key] = request.output_quant
        out: dict[str, Weight] = {}
        for done, key in enumerate(wanted, start=1):
            out[key] = self._one(key, request, quantize.get(key))
            tie_output(out, self.layout)
            if progress is not None:
                progress(done, len(wanted))
        return out

    def _one(self, key: str, request: ReadRequest, quant: QuantSpec | None) -> Weight:
        split = self.layout.split(key)
        rank, tp, device = request.rank, request.tp, request.device
        read_as = getattr(self.state_dict, "read_as", None)  # a file reader that converts while it reads
        whole = tp == 1 or split is Split.REPLICATED
        if read_as is not None and whole and quant is None and request.dtype is not None:
            value = read_as(key, request.dtype)
        else:
            value = self.state_dict[key]
        if isinstance(value, QuantizedWeight):
            piece = shard_quantized(key, split, value, rank, tp)
            # only the four linears run quantized; a release's quantized embedding or lm_head is dequantized as the
            # reference dequantizes it (THUDM's chatglm-6b-int4-qe quantizes both)
            if request.keep_quantized and key in self.layout.quantizable:
                return piece.to(device)
            return self.dequantize(piece, request.dtype or torch.float16).to(device)
        piece = shard(split, value, rank, tp, key) if tp > 1 else value
        if quant is not None:
            return QuantizedWeight.quantize(piece, quant.bits, quant.group_size).to(device)
        return piece.to(device=device, dtype=request.dtype or piece.dtype)
