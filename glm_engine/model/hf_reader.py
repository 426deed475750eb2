"""A family's weights from a Hugging Face release as a :class:`~glm_engine.model.weights.WeightReader`: the folder
read one file at a time, or a state dict in memory, in the released form (INT4/INT8 releases included).

Each file's tensors are made canonical (a stored INT4/INT8 weight and its ``weight_scale`` become one
``QuantizedWeight``, fused parts one tensor, even when they sit in different files), cut to the rank's shard by the
family's split rules, quantized or converted, before the next file is opened: host RAM holds one source file plus the
converted weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from glm_engine.checkpoint.hf import HFCheckpoint, TensorInfo, open_weight_file
from glm_engine.errors import CheckpointError
from glm_engine.model.hf_release import LoadPlan, ReleaseSpec, canonical_state_dict, dequantize_stored, plan_load
from glm_engine.model.state_dict import StateDictReader
from glm_engine.model.weights import Progress, ReadRequest, Weight
from glm_engine.quant.spec import QuantSpec
from glm_engine.quant.weight import QuantizedWeight


class ReleaseReader:
    """One rank's tensors of a Hugging Face release (``checkpoint``) or an in-memory ``state_dict`` in its names."""

    def __init__(
        self,
        spec: ReleaseSpec,
        description: str,
        checkpoint: HFCheckpoint | None = None,
        state_dict: Mapping[str, torch.Tensor | QuantizedWeight] | None = None,
        config: object = None,
    ) -> None:
        if (checkpoint is None) == (state_dict is None):
            raise ValueError("a ReleaseReader reads a checkpoint folder or a state dict")
        self.config = config  # the model config the spec was made from (the WeightReader protocol's)
        self.spec, self.layout, self.description = spec, spec.layout, description
        self.checkpoint, self.state_dict = checkpoint, state_dict
        entries = checkpoint.entries if checkpoint is not None else _infos(state_dict, description)
        self.plan: LoadPlan = plan_load(entries, spec, str(checkpoint.path) if checkpoint else description)
        self.unused_keys = self.plan.unused_keys
        quantized = [v for v in (state_dict or {}).values() if isinstance(v, QuantizedWeight)]
        self._canonical = (  # a state dict already holding QuantizedWeight (quantized in memory, not a release)
            QuantSpec(quantized[0].bits, None if quantized[0].groups == 1 else quantized[0].group_size)
            if quantized
            else None
        )

    @property
    def stored_quant(self) -> QuantSpec | None:
        return QuantSpec(self.plan.bits) if self.plan.bits else self._canonical

    def runtime_quant_specs(self, tp: int) -> list[QuantSpec]:
        """Rowwise at the stored width at every TP degree: a rowwise weight split by columns keeps its row scales."""
        return [self.stored_quant] if self.stored_quant is not None else []

    def read(
        self, request: ReadRequest, keys: list[str] | None = None, progress: Progress | None = None
    ) -> dict[str, Weight]:
        wanted = list(self.layout.shapes) if keys is None else list(keys)
        if request.quant is not None and self.plan.bits:
            raise CheckpointError(
                f"{self.description} is already INT{self.plan.bits}; quantizing it again would compound the "
                "rounding. Load it as it is, or quantize its FP16 original"
            )
        out: dict[str, Weight] = {}
        for part in self._parts(wanted):
            canonical = canonical_state_dict(part, self.plan.quantized_bits, self.spec)
            names = [k for k in wanted if k in canonical and k not in out]
            reader = StateDictReader(self.layout, canonical, self.description, dequantize=dequantize_stored)
            done = len(out)
            step = None if progress is None else (lambda n, _total, done=done: progress(done + n, len(wanted)))
            out.update(reader.read(request, names, step))
        absent = [k for k in wanted if k not in out]
        if absent:  # plan_load saw these keys, so a file changed or an index lied about where they are
            raise CheckpointError(f"tensors listed by the checkpoint were not found while loading: {absent[:5]}")
        return out

    def _parts(self, keys: list[str]) -> Iterator[dict[str, torch.Tensor]]:
        """The file tensors ``keys`` need, grouped so that every quantized weight comes with its scale and every fused
        key with all its parts: one group per file, a key whose members continue in a later file held back."""
        quantized = self.plan.quantized_bits
        members = {key: self.spec.members(key, quantized) for key in keys}
        if self.state_dict is not None:
            yield {m: self.state_dict[m] for ms in members.values() for m in ms}
            return
        by_file: dict[str, list[str]] = {}
        for member in (m for ms in members.values() for m in ms):
            by_file.setdefault(self.checkpoint.entries[member].file, []).append(member)
        order = [p.name for p in self.checkpoint.files]
        pending: dict[str, torch.Tensor] = {}
        for name in sorted(by_file, key=order.index):
            weights = open_weight_file(Path(self.checkpoint.path) / name)
            part = {**pending, **{k: weights[k] for k in by_file[name]}}
            del weights
            complete = {m for ms in members.values() if all(m in part for m in ms) for m in ms}
            pending = {k: v for k, v in part.items() if k not in complete}
            yield {k: v for k, v in part.items() if k in complete}
        if pending:
            raise CheckpointError(f"weights without their scales or fused parts: {sorted(pending)[:5]}")


def _infos(state_dict: Mapping[str, torch.Tensor | QuantizedWeight], source: str) -> dict[str, TensorInfo]:
    """What validation needs of an in-memory state dict; a ``QuantizedWeight`` counts as the fp16 matrix it is."""
    return {
        k: TensorInfo((v.out_features, v.in_features), torch.float16, source)
        if isinstance(v, QuantizedWeight)
        else TensorInfo(tuple(v.shape), v.dtype, source)
        for k, v in state_dict.items()
    }
