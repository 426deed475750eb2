"""``load()``: any model source on any backend, through one path (``docs/architecture.md``).

name -> :func:`~glm_engine.engine.source.open_source` (family, config, weights reader; metadata only) -> backend and
dtype -> the family's tokenizer (so a missing file fails before minutes of loading) -> the quantization plan
(:mod:`glm_engine.engine.plan`) -> this rank's tensors from the reader -> the backend's runtime form
(``ModelWeights.assemble``) -> the one decoder graph (``DecoderModel``) -> :class:`Engine`. An exported folder goes to
its graph-level backend instead, which holds its own weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from glm_engine.backends.base import Backend, GraphLevelBackend, dtype_name
from glm_engine.backends.registry import op_table_for
from glm_engine.engine.engine import Engine, NoTokenizer
from glm_engine.engine.plan import (
    QuantPlan,
    check_quant_fits,
    join_ranks,
    plan_quantization,
    requested_quant,
    resolve_backend,
    resolve_dtype,
)
from glm_engine.engine.source import DEFAULT_MODEL, MAX_RANDOM_PARAMETERS, ModelSource, open_source
from glm_engine.errors import InputError, ParallelError
from glm_engine.exported import FILES_SECTION, read_exported, refuse_exported_folder
from glm_engine.model.graph import DecoderModel
from glm_engine.model.parts import DenseBias
from glm_engine.model.weights import ModelWeights, ReadRequest
from glm_engine.ops.interface import Op, OpTable
from glm_engine.parallel.communicator import Communicator
from glm_engine.parallel.degree import check_tp_degree
from glm_engine.quant.spec import QuantSpec

Progress = Callable[[int, int], None]


def load(
    path_or_preset: str | Path = DEFAULT_MODEL,
    backend: str = "auto",
    dtype: str | torch.dtype | None = None,
    tokenizer: str | Path | bool | None = None,
    config: Any = None,
    device_index: int = 0,
    progress: Progress | None = None,
    tp: int = 1,
    communicator: Communicator | None = None,
    quant: str | QuantSpec | None = None,
    quant_scheme: str = "rowwise",
    quant_group_size: int | None = None,
    quant_output: bool = False,
    cuda_graphs: bool | None = None,
    backend_options: dict[str, object] | None = None,
    random_dtype: torch.dtype = torch.float32,
    max_random_parameters: int = MAX_RANDOM_PARAMETERS,
) -> Engine:
    """Load a model: a checkpoint folder of any family (default: the built-in demo model), a preset name (seeded
    random weights), or a folder made by ``glm-engine export`` (on ``onnxruntime`` / ``tensorrt``).

    ``backend`` is a registered name or ``"auto"``; ``dtype`` ``"fp32" | "bf16" | "fp16"`` (default: the backend's
    first choice); ``tokenizer`` the tokenizer file or its folder (default: the checkpoint's own; GLM-130B also looks
    in icetk's cache; presets use the packaged test tokenizer), or False for none (``forward`` on token ids only);
    ``config`` a preset name, config.json or config object
    replacing a preset's shapes or naming a SAT folder's; ``progress(done, total)`` follows the weights as they are
    converted and placed on the device.

    ``tp > 1`` loads this process's rank of a tensor-parallel model: every rank calls ``load`` with the same
    arguments, under torchrun (the process group is joined from its environment) or with a ``communicator`` of
    ``tp`` ranks; the device is the rank's LOCAL_RANK. Every rank's ``generate``/``forward``/``chat`` returns the
    full result.

    ``quant="int8"|"int4"`` quantizes the four linears per layer while loading (``quant_scheme`` ``"rowwise"``, the
    reference's, or ``"groupwise"`` with ``quant_group_size`` 32/64/128). A quantized checkpoint runs quantized
    without it (dequantized, with a note, where the backend has no kernels for its format). ``quant_output=True``
    also runs the logits through the output projection quantized in the same format (a quantized copy of a tied
    embedding; the lookup keeps the floating-point table), as chatglm.cpp does: at batch-1 decode it is a large share
    of the bytes streamed per token.

    ``backend_options`` are keyword options of a graph-level backend's ``load_runner`` (onnxruntime: ``provider``,
    ``threads``; tensorrt: ``device_index``). ``cuda_graphs=False`` runs cached decode steps eagerly on a GPU
    (default: replayed device graphs where the backend offers them). A preset's random weights are drawn in
    ``random_dtype`` up to ``max_random_parameters`` (``glm-engine bench`` raises it for its ``random:`` models).
    """
    chosen, why = resolve_backend(backend)
    run_dtype = resolve_dtype(dtype, chosen)
    if isinstance(chosen, GraphLevelBackend):
        return _load_exported(chosen, why, path_or_preset, dtype, tokenizer, tp, quant, quant_output, backend_options)
    refuse_exported_folder(path_or_preset)
    source = open_source(path_or_preset, config, random_dtype, max_random_parameters)
    family, model_config = source.family, source.config
    notes = [why, *source.notes]
    tok = _tokenizer(family, model_config, tokenizer, source.folder, source.random)  # fail before loading
    check_tp_degree(model_config, tp, source.description)
    comm = join_ranks(tp, communicator, chosen)
    if comm.world_size > 1:
        device_index = comm.local_rank
    required = family.parts(model_config).required_ops()
    ops = op_table_for(chosen, run_dtype, device_index, required)  # refuses what it cannot run before loading
    requested = requested_quant(quant, quant_scheme, quant_group_size)
    quant_plan = plan_quantization(
        requested, source.reader, family.weight_layout(model_config), chosen, run_dtype, tp, quant_output
    )
    notes += quant_plan.notes
    weights = load_weights(source, quant_plan, ops, comm, progress)
    runner = DecoderModel(model_config, weights, ops, comm)
    runner.cuda_graphs = cuda_graphs
    notes += ops.prepare_linears(representative_linears(runner))
    notes += _closing_notes(source, chosen, run_dtype, tp, weights)
    banned = family.generation_bans(model_config, tok, source.random) if tok else ()
    return Engine(runner, tok, chosen, source.description, notes, banned)


def _tokenizer(family: Any, config: Any, tokenizer: str | Path | bool | None, folder: Path | None, random: bool) -> Any:
    """The family's tokenizer, or a :class:`NoTokenizer` for ``tokenizer=False``."""
    if tokenizer is False:
        return NoTokenizer()
    if tokenizer is True:
        tokenizer = None
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        raise InputError(f"tokenizer must be a path, None (the model's own) or False (none), got {tokenizer!r}")
    loaded = family.load_tokenizer(config, tokenizer, folder, random)
    family.check_tokenizer(config, loaded, random)
    return loaded


def load_weights(
    source: ModelSource, plan: QuantPlan, ops: OpTable, comm: Communicator, progress: Progress | None
) -> ModelWeights:
    """This rank's weights of ``source``, read, quantized and placed as ``plan`` says, in ``ops``' runtime form."""
    layout = source.family.weight_layout(source.config)
    if plan.runtime is not None:
        check_quant_fits(layout, comm.world_size, plan.runtime, plan.output is not None)
    request = ReadRequest(
        comm.rank, comm.world_size, ops.dtype, ops.device, plan.requested, plan.keep_quantized, plan.output
    )
    tensors = source.reader.read(request, progress=progress)
    tied_output = plan.output if layout.output_key is None else None
    return ModelWeights.assemble(
        layout, tensors, ops.dtype, ops.device, ops.prepare_quantized, tied_output, source.reader.unused_keys
    )


def representative_linears(runner: DecoderModel) -> list[tuple[str, Any, torch.Tensor | None]]:
    """The first layer's linears and the output layer as ``ops.linear`` sees them (label, weight, bias): the shapes
    every layer repeats, which a backend that picks kernels by measuring times (``OpTable.prepare_linears``)."""
    layer = runner.weights.layers[0]
    fused = runner.parts.dense_bias is DenseBias.FUSED and runner.comm.world_size == 1
    return [
        ("qkv", layer.query_key_value_weight, layer.query_key_value_bias),
        ("dense", layer.dense_weight, layer.dense_bias if fused else None),
        ("h_to_4h", layer.dense_h_to_4h_weight, layer.dense_h_to_4h_bias),
        ("4h_to_h", layer.dense_4h_to_h_weight, layer.dense_4h_to_h_bias if fused else None),
        ("output", runner.weights.logits_weight, None),
    ]


def _closing_notes(
    source: ModelSource, backend: Backend, dtype: torch.dtype, tp: int, weights: ModelWeights
) -> list[str]:
    notes = []
    if source.random:
        notes.append(f"{source.description}: its output is noise, not language")
    notes.append(
        f"{backend.name} backend, {dtype_name(dtype)}" + (f", tensor parallel over {tp} ranks" if tp > 1 else "")
    )
    required = source.family.parts(source.config).required_ops()  # notes about ops this model does not run are noise
    notes.extend(
        f"{op.value} in {dtype_name(dtype)}: {v.reason}"
        for op in Op
        if op in required and (v := backend.supports(op, dtype)).reason
    )
    if weights.unused_keys:
        shown = ", ".join(weights.unused_keys[:5])
        notes.append(f"{len(weights.unused_keys)} keys of the checkpoint are not used: {shown}")
    return notes


def _load_exported(
    chosen: GraphLevelBackend,
    why: str,
    folder: str | Path,
    dtype: str | torch.dtype | None,
    tokenizer: str | Path | bool | None,
    tp: int,
    quant: str | QuantSpec | None,
    quant_output: bool,
    backend_options: dict[str, object] | None,
) -> Engine:
    """An exported folder on a graph-level backend: the graph carries its own weights, dtype and quantization."""
    if tp != 1:
        raise ParallelError(f"{chosen.name} runs an exported graph, which has no tensor-parallel form; use tp=1")
    if quant is not None or quant_output:
        raise InputError(f"{chosen.name} runs an exported graph; quantize when exporting instead of --quant")
    # An exported graph has its own dtype: pass one only when asked.
    wanted = resolve_dtype(dtype, chosen) if dtype is not None else None
    runner = chosen.load_runner(str(folder), wanted, **(backend_options or {}))
    source = open_source(folder)
    tok = _tokenizer(source.family, runner.config, tokenizer, Path(folder), False)
    notes = [why, f"{chosen.name} backend, {dtype_name(runner.dtype)} (the export's)"]
    if FILES_SECTION not in read_exported(folder).description:
        notes.append("its files' sizes and checksums were not checked: it was exported before glm-engine recorded them")
    return Engine(runner, tok, chosen, source.description, notes)
