"""One load plan for every command: which backend and dtype, which quantization, how many ranks, and why.

``run``, ``chat``, ``export``, ``bench``, ``convert`` and ``quantize`` ask the same questions of a model source and
get the same answers and messages here: what a ``--quant`` request means next to a quantized checkpoint, whether the
backend has kernels for a format (else the weights are dequantized, with a note), whether a group size fits every
quantized linear at a TP degree, and whether the TP degree splits the model (``docs/quantization.md``,
``docs/tensor-parallelism.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from glm_engine.backends.base import Backend, dtype_name, parse_dtype
from glm_engine.backends.registry import REGISTRY
from glm_engine.errors import BackendError, InputError, ParallelError
from glm_engine.model.weights import WeightLayout, WeightReader
from glm_engine.ops.interface import Op
from glm_engine.parallel.communicator import Communicator, init_from_environment
from glm_engine.quant.spec import QuantSpec


@dataclass
class QuantPlan:
    """How the linears (and the output projection) load: ``runtime`` is the format they run in (None: floating
    point), ``requested`` is quantized while loading, ``keep_quantized`` keeps a quantized source quantized."""

    runtime: QuantSpec | None = None
    requested: QuantSpec | None = None
    keep_quantized: bool = True
    output: QuantSpec | None = None
    notes: list[str] = field(default_factory=list)


def resolve_backend(name: str) -> tuple[Backend, str]:
    """``auto`` or a name -> an available backend and why it was chosen (a BackendError says why not)."""
    return REGISTRY.resolve(name)


def resolve_dtype(dtype: str | torch.dtype | None, backend: Backend) -> torch.dtype:
    """A dtype name (fp32, bf16, fp16) or torch dtype; None is the backend's first choice."""
    if dtype is None:
        return backend.default_dtype()
    if isinstance(dtype, torch.dtype):
        return dtype
    return parse_dtype(dtype)


def requested_quant(
    quant: str | QuantSpec | None, scheme: str = "rowwise", group_size: int | None = None
) -> QuantSpec | None:
    """What ``--quant/--quant-scheme/--quant-group-size`` ask for (a scheme without ``--quant`` is refused)."""
    return quant if isinstance(quant, QuantSpec) else QuantSpec.requested(quant, scheme, group_size)


def output_name(layout: WeightLayout) -> str:
    """How messages name the output projection: the separate matrix's name, or the tied embedding's copy."""
    return "the output projection" if layout.output_key is None else layout.output_key.rsplit(".", 1)[0]


def refuse_double_quantization(requested: QuantSpec | None, stored: QuantSpec | None, description: str) -> None:
    """An InputError for quantizing weights that are already quantized (the rounding would compound)."""
    if requested is not None and stored is not None:
        raise InputError(
            f"{description} is already quantized (already INT{stored.bits}, {stored.describe()}): drop --quant to run "
            "it as it is, or quantize its FP16 original"
        )


def plan_quantization(
    requested: QuantSpec | None,
    reader: WeightReader,
    layout: WeightLayout,
    backend: Backend,
    dtype: torch.dtype,
    tp: int,
    quant_output: bool,
) -> QuantPlan:
    """The quantization a model loads with. A stored format the backend has no kernels for is dequantized while
    loading (with a note); a requested one it cannot run is an error. A stored checkpoint is checked in every format
    its linears take at ``tp`` (re-sharding can make row-parallel ones groupwise)."""
    stored = reader.stored_quant
    refuse_double_quantization(requested, stored, reader.description)
    plan = QuantPlan(requested=requested)
    spec = requested or stored
    if spec is not None:
        specs = [requested] if requested is not None else reader.runtime_quant_specs(tp)
        for each in specs:
            verdict = backend.supports(Op.LINEAR, dtype, each.format)
            if not verdict:
                if requested is not None:
                    raise BackendError(f"--quant {spec.describe()}: {verdict.reason}")
                plan.notes.append(
                    f"{stored.describe()} weights dequantized to {dtype_name(dtype)} while loading "
                    f"({each.describe()}): {verdict.reason}"
                )
                plan.keep_quantized = False
                break
            stored_note = ", as stored" if requested is None else ""
            plan.notes.append(
                f"linears in {each.describe()}{stored_note}" + (f" ({verdict.reason})" if verdict.reason else "")
            )
        if plan.keep_quantized:
            plan.runtime = spec
            if len(specs) > 1:
                plan.notes.append(f"row-parallel linears re-sharded to TP={tp} keep one scale per source slice")
    if quant_output:
        require_output_format(layout, plan.runtime)
        plan.output = plan.runtime
        copy = " (a quantized copy of the embedding)" if layout.output_key is None else ""
        plan.notes.append(f"{output_name(layout).removeprefix('the ')} in {plan.output.describe()}{copy}")
    return plan


def require_output_format(layout: WeightLayout, spec: QuantSpec | None) -> QuantSpec:
    """The format ``--quant-output`` quantizes the output projection in: the linears'; an InputError without one."""
    if spec is None:
        raise InputError(
            f"--quant-output quantizes {output_name(layout)} like the linears: add --quant int8|int4 (or use a "
            "quantized checkpoint, on a backend with kernels for its format)"
        )
    return spec


def check_quant_fits(layout: WeightLayout, tp: int, spec: QuantSpec, output: bool = False) -> None:
    """An InputError unless the group size divides every quantized linear's input width on one rank (and the
    output projection's, when it is quantized too)."""
    if spec.group_size is None:
        return
    quantized = set(layout.quantizable) | ({layout.output_key or layout.embedding_key} if output else set())
    for key, shape in layout.shapes_at(tp).items():
        if key in quantized and shape[1] % spec.group_size:
            raise InputError(
                f"group size {spec.group_size} does not divide the {shape[1]} inputs of {key.split('.', 3)[-1]} "
                f"at TP={tp}; choose a group size from 32, 64, 128 that does, or rowwise"
            )


def join_ranks(tp: int, given: Communicator | None, backend: Backend) -> Communicator:
    """The communicator of ``tp`` ranks: the caller's, one joined from torchrun's environment, or a single process."""
    if given is None:
        given = Communicator() if tp == 1 else init_from_environment(backend)
    if given.world_size != tp:
        raise ParallelError(
            f"tp={tp} needs {tp} ranks, but the process group has {given.world_size}; start as many ranks as --tp"
        )
    return given
