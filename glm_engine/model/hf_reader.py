"""A family's weights from a Hugging Face release as a :class:`~glm_engine.model.weights.WeightReader`: the folder
read one file at a time, or a state dict in memory, in the released form (INT4/INT8 releases included).

Each file's tensors are made canonical (a stored INT4/INT8 weight and its ``weight_scale`` become one
``QuantizedWeight``, fused parts one tensor, even when they sit in different files), cut to the rank's shard by the
family's split rules, quantized or converted, before the next file is opened. Tensors are read one at a time as they
are converted (safetensors straight into the runtime dtype), so host RAM holds the converted weights plus one source
tensor; an output matrix equal to the embedding is held once (``weights.tie_output``; ``docs/checkpoints.md#memory``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from glm_engine.checkpoint.hf import HFCheckpoint, TensorInfo, open_weight_file
from glm_engine.errors import CheckpointError
from glm_engine.model.hf_release import LoadPlan, ReleaseSpec, canonical_state_dict, dequantize_stored, plan_load
from glm_engine.model.state_dict import StateDictReader
from glm_engine.model.weights import Progress, ReadRequest, Weight, WeightLayout, quantized_copy, tie_output
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
        layout = self.layout
        tied = self.plan.tied_output and layout.output_key in wanted
        from_files = [k for k in wanted if not (tied and k == layout.output_key)]
        if tied and layout.embedding_key not in from_files:
            from_files.insert(0, layout.embedding_key)
        out: dict[str, Weight] = {}
        for part in self._parts(from_files):
            canonical = _Canonical(part, self.plan.quantized_bits, self.spec)
            names = [k for k in from_files if k in canonical and k not in out]
            reader = StateDictReader(layout, canonical, self.description, dequantize=dequantize_stored)
            for batch in _embedding_first(names, layout):
                if layout.output_key in batch and _equal_in_file(canonical, out, request, layout):
                    out[layout.output_key] = out[layout.embedding_key]  # compared in the file: never read
                    batch = [k for k in batch if k != layout.output_key]
                    if progress is not None:
                        progress(len(out), len(wanted))
                done = len(out)
                step = None if progress is None else (lambda n, _total, done=done: progress(done + n, len(wanted)))
                out.update(reader.read(request, batch, step))
            tie_output(out, layout)
        if tied:  # the files leave the output matrix out: the embedding serves (see ReleaseSpec.output_may_be_absent)
            table = out[layout.embedding_key]
            quant = request.output_quant
            out[layout.output_key] = table if quant is None else quantized_copy(table, quant).to(request.device)
        absent = [k for k in wanted if k not in out]
        if absent:  # plan_load saw these keys, so a file changed or an index lied about where they are
            raise CheckpointError(f"tensors listed by the checkpoint were not found while loading: {absent[:5]}")
        return {k: out[k] for k in wanted}

    def _parts(self, keys: list[str]) -> Iterator[Mapping[str, torch.Tensor]]:
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
            here = set(by_file[name]) | set(pending)
            complete = {m for ms in members.values() if all(m in here for m in ms) for m in ms}
            yield _FilePart(weights, pending, [k for k in by_file[name] if k in complete])
            # a fused key's or quantized weight's members that continue in a later file are read now, kept for it
            pending = {k: v for k, v in pending.items() if k not in complete}
            pending.update({k: weights[k] for k in by_file[name] if k not in complete})
            del weights
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


def _embedding_first(names: list[str], layout: WeightLayout) -> list[list[str]]:
    """``names`` in one batch, or the embedding alone first when the output matrix comes in the same part (so the
    output can be compared with the embedding before it is read)."""
    if layout.embedding_key in names and layout.output_key in names:
        return [[layout.embedding_key], [k for k in names if k != layout.embedding_key]]
    return [names]


def _equal_in_file(part: _Canonical, out: Mapping[str, Weight], request: ReadRequest, layout: WeightLayout) -> bool:
    """Whether the output matrix in the file equals the embedding already held (whole, on the CPU, floating point),
    compared chunk by chunk without reading it into memory of its own (``stream.equals``)."""
    table = out.get(layout.embedding_key)
    if not isinstance(table, torch.Tensor) or table.device.type != "cpu" or request.tp != 1:
        return False
    return request.output_quant is None and part.equals(layout.output_key, table)


class _LazyView(Mapping[str, Any]):
    """A mapping over a fixed key list whose values are read or built only when asked for: membership, iteration
    and length never touch a value (``Mapping``'s default ``__contains__`` would read it)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys_ = dict.fromkeys(keys)  # ordered, with O(1) membership

    def __contains__(self, key: object) -> bool:
        return key in self.keys_

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)


class _FilePart(_LazyView):
    """One file's tensors that are complete in it (plus members held back from earlier files), read on access: a
    safetensors tensor is read only when converted, so the source tensors are not all held at once."""

    def __init__(self, weights: Mapping[str, torch.Tensor], held: Mapping[str, torch.Tensor], keys: list[str]) -> None:
        super().__init__([*held, *keys])
        self.weights, self.held = weights, held

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.held[key] if key in self.held else self.weights[key]

    def equals(self, key: str, tensor: torch.Tensor) -> bool:
        """Whether ``key``, converted to ``tensor``'s dtype, equals ``tensor``; compared in the file where it can be."""
        equals = getattr(self.weights, "equals", None)
        if equals is None or key in self.held:
            return torch.equal(self[key].to(tensor.dtype), tensor)
        return equals(key, tensor)

    def read_as(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        """``key`` converted to ``dtype`` while read, where the file can (``LazySafetensors.read_as``)."""
        read_as = getattr(self.weights, "read_as", None)
        if read_as is None or key in self.held:
            return self[key].to(dtype)
        return read_as(key, dtype)


class _Canonical(_LazyView):
    """A part's tensors under the layout's keys (``hf_release.canonical_state_dict``), each built when asked for."""

    def __init__(self, part: Mapping[str, torch.Tensor], bits: Mapping[str, int], spec: ReleaseSpec) -> None:
        self.part, self.bits, self.spec = part, bits, spec
        present = set(part)
        super().__init__(
            [
                key
                for key in spec.layout.shapes
                if (members := spec.members(key, bits)) and all(m in present for m in members)
            ]
        )

    def __getitem__(self, key: str) -> Weight:
        if key not in self.keys_:
            raise KeyError(key)
        members = self.spec.members(key, self.bits)
        if members == [key]:
            return self.part[key]
        return canonical_state_dict({m: self.part[m] for m in members}, self.bits, self.spec)[key]

    def equals(self, key: str, tensor: torch.Tensor) -> bool:
        """Whether a plain floating-point key equals ``tensor`` after conversion (fused and quantized keys never do)."""
        if self.spec.members(key, self.bits) != [key] or not hasattr(self.part, "equals"):
            return False
        return self.part.equals(key, tensor)

    def read_as(self, key: str, dtype: torch.dtype) -> Weight:
        """A plain floating-point key read straight into ``dtype``; fused and quantized keys as :meth:`__getitem__`
        builds them (the caller converts)."""
        if self.spec.members(key, self.bits) == [key] and hasattr(self.part, "read_as"):
            return self.part.read_as(key, dtype)
        return self[key]
