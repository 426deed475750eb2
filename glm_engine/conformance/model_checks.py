"""Model-level checks on a tiny model of every family: logits NMSE and greedy-token agreement against the CPU float64
reference.

The reference is the decoder graph on ``TorchOps`` in float64 with the same weights (a quantized model's reference
multiplies out its stored weights in float64). It runs a [gMASK] prompt (prefill) and ``steps`` greedy tokens with
the KV cache, laid out by the family's own positions and mask (``Family.prompt_inputs``). The backend then runs the
same prompt and, teacher-forced, the reference's tokens through its own cache: prefill logits, cached-decode logits
and each step's greedy choice are compared. A greedy choice that differs from the reference's is excused only when the
two tokens' reference logits are closer than the logits' allowed error (a near tie), so the agreement check is as strict
as the dtype allows and no stricter.

TP=2 runs two ranks (``torch.multiprocessing``, the backend's process-group backend: gloo on the CPU) where the
backend has two devices or is the CPU, for unquantized dtypes (a TP-quantized checkpoint's scales belong to each
rank's slice, so its reference would be a different model). Each family's tiny config is its
``Family.conformance_config()``; the shape column names the family (``glm tp1 float``).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from glm_engine.backends.base import OpLevelBackend, dtype_name
from glm_engine.backends.registry import get_backend, op_table_for
from glm_engine.conformance.oracle import ORACLE_DTYPE, oracle_table
from glm_engine.conformance.runner import CaseResult, Progress, Status, dtypes_for, synchronize
from glm_engine.conformance.thresholds import threshold_for
from glm_engine.model.family import Family
from glm_engine.model.graph import DecoderModel
from glm_engine.model.registry import FAMILIES, family_named
from glm_engine.ops.interface import Op, OpTable
from glm_engine.parallel.communicator import Communicator, TorchDistributedCommunicator, process_group_device
from glm_engine.quant.formats import QuantFormat
from glm_engine.quant.weight import QuantizedWeight

WEIGHTS_SEED = 11  # the families' random_state_dict seed: weights chosen to give non-trivial greedy output
PROMPT_WORDS = 8  # text tokens before [gMASK] and sop
GREEDY_STEPS = 8
QUANT_GROUP_SIZE = 32  # groupwise formats in the model checks (the tiny widths are multiples of it)
NEAR_TIE_SIGMAS = 4.0  # a greedy flip is excused when the reference's logit gap is below this many allowed errors
QUANT_BITS = {
    QuantFormat.INT8_ROWWISE: (8, None),
    QuantFormat.INT8_GROUPWISE: (8, QUANT_GROUP_SIZE),
    QuantFormat.INT4_ROWWISE: (4, None),
    QuantFormat.INT4_GROUPWISE: (4, QUANT_GROUP_SIZE),
}


@dataclass
class Trace:
    """What one run of the sequence produced: prefill logits, decode logits per step, greedy token per step."""

    prefill: torch.Tensor  # [len(PROMPT), vocab]
    decode: torch.Tensor  # [steps, vocab]: logits after each teacher-forced token
    tokens: list[int]  # greedy choice after the prompt and after each step


def prompt_ids(family: Family) -> list[int]:
    """``PROMPT_WORDS`` plain text ids, then ``[gMASK]`` and ``sop`` in the family's tiny vocabulary."""
    tokens = family.blank_tokens(family.conformance_config())
    return [*tokens.text[20 : 20 + PROMPT_WORDS], tokens.gmask, tokens.sop]


def _state(family: Family, quant: QuantFormat | None) -> dict:
    config = family.conformance_config()
    state = family.random_state_dict(config, WEIGHTS_SEED)
    if quant is None:
        return state
    bits, group = QUANT_BITS[quant]
    quantizable = family.weight_layout(config).quantizable
    return {k: QuantizedWeight.quantize(v, bits, group) if k in quantizable else v for k, v in state.items()}


def _model(family: Family, ops: OpTable, state: dict, comm: Communicator | None = None) -> DecoderModel:
    return DecoderModel.from_state_dict(family.conformance_config(), state, ops, comm)


def run_sequence(model: DecoderModel, forced: Sequence[int] | None = None, steps: int = GREEDY_STEPS) -> Trace:
    """Prefill the family's prompt, then ``steps`` cached decode steps feeding ``forced`` tokens (or its own greedy
    ones), at the positions and under the mask the family lays such a sequence out with."""
    prompt = prompt_ids(model.family)
    n, total = len(prompt), len(prompt) + steps
    layout_ids = torch.tensor([prompt + [prompt[0]] * steps])  # generated ids do not change positions or mask
    positions, blocked = model.family.prompt_inputs(model.config, layout_ids)
    positions, blocked = positions.to(model.device), blocked.to(model.device)
    cache = model.new_cache(1, total)
    with torch.no_grad():
        ids = torch.tensor([prompt], device=model.device)
        prefill = model.forward(ids, positions[..., :n], blocked[..., :n, :n], cache)
        tokens, decode = [int(prefill[0, -1].argmax())], []
        for step in range(steps):
            col = n + step
            token = forced[step] if forced is not None else tokens[-1]
            logits = model.forward(
                torch.tensor([[token]], device=model.device),
                positions[..., col : col + 1],
                blocked[..., col : col + 1, : col + 1],
                cache,
            )
            decode.append(logits[0, -1])
            tokens.append(int(logits[0, -1].argmax()))
    synchronize(model.device)
    return Trace(prefill[0].cpu(), torch.stack(decode).cpu(), tokens)


def reference_trace(family: Family, quant: QuantFormat | None) -> Trace:
    return run_sequence(_model(family, oracle_table(), _state(family, quant)))


def _nmse(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.to(ORACLE_DTYPE), expected.to(ORACLE_DTYPE)
    return float(((a - e) ** 2).sum() / (e * e).sum())


def compare(trace: Trace, ref: Trace, bound: float) -> list[tuple[str, Status, float | None, str]]:
    """(check, status, value, detail) for prefill logits, decode logits and greedy agreement."""
    rows = []
    for check, actual, expected in (("prefill", trace.prefill, ref.prefill), ("decode", trace.decode, ref.decode)):
        if not bool(torch.isfinite(actual).all()):
            rows.append((f"model:{check}", Status.FAIL, None, "NaN/inf in the logits"))
            continue
        error = _nmse(actual, expected)
        ok = error <= bound
        rows.append((f"model:{check}", Status.PASS if ok else Status.FAIL, error, "" if ok else f"NMSE {error:.2e}"))
    logits = torch.cat((ref.prefill[-1:], ref.decode))  # the reference logits each greedy choice was made from
    agree, excused, bad = 0, 0, []
    for step, (mine, theirs) in enumerate(zip(trace.tokens, ref.tokens)):
        if mine == theirs:
            agree += 1
            continue
        allowed = NEAR_TIE_SIGMAS * math.sqrt(bound * float((logits[step].double() ** 2).mean()))
        if float(logits[step, theirs] - logits[step, mine]) <= allowed:
            excused += 1
        else:
            bad.append(f"step {step}: {mine} instead of {theirs}")
    detail = f"{agree}/{len(ref.tokens)} tokens agree" + (f", {excused} near-tie flips" if excused else "")
    status = Status.FAIL if bad else Status.PASS
    rows.append(("model:greedy", status, None, detail + ("; " + "; ".join(bad) if bad else "")))
    return rows


def _tp_worker(rank: int, backend_name: str, work: list, init_file: str, out_file: str) -> None:
    """One rank: the sequence for each ``(family name, dtype, forced tokens)`` of ``work``; rank 0 saves the
    traces."""
    backend = get_backend(backend_name)
    assert isinstance(backend, OpLevelBackend)
    if backend.device_type != "cpu":
        torch.get_device_module(backend.device_type).set_device(rank)
    dist.init_process_group(
        backend.dist_backend,
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        device_id=process_group_device(backend, rank),
    )
    try:
        comm = TorchDistributedCommunicator(rank)
        traces = []
        for name, dtype, forced in work:
            family = family_named(name)
            ops = op_table_for(backend, dtype, rank)
            traces.append(run_sequence(_model(family, ops, _state(family, None), comm), forced))
        if rank == 0:
            torch.save(traces, out_file)
    finally:
        dist.destroy_process_group()


def tp2_traces(backend: OpLevelBackend, work: list[tuple[str, torch.dtype, list[int]]]) -> list[Trace]:
    """The sequence on two ranks of ``backend`` (two processes, started once), per ``(family name, dtype, forced
    tokens)``."""
    with tempfile.TemporaryDirectory(prefix="glm-engine-conformance-") as folder:
        init_file, out_file = os.path.join(folder, "init"), os.path.join(folder, "traces.pt")
        mp.spawn(_tp_worker, args=(backend.name, work, init_file, out_file), nprocs=2, join=True)
        return torch.load(out_file, weights_only=False)


def tp_degrees(backend: OpLevelBackend) -> list[int]:
    """TP=1 always; TP=2 on the CPU (gloo) or where the backend sees two devices."""
    return [1, 2] if backend.device_type == "cpu" or backend.device_count() >= 2 else [1]


def _row(backend: OpLevelBackend, shape: str, dtype: torch.dtype, status: Status, detail: str) -> CaseResult:
    return CaseResult(backend.name, "model", shape, dtype_name(dtype), status, detail=detail)


Point = tuple[str, torch.dtype, QuantFormat | None, int]  # family name, dtype, quant format, TP degree


def _points(
    backend: OpLevelBackend, families: Sequence[str], dtypes: Sequence[torch.dtype], degrees: Sequence[int], quant: bool
) -> tuple[list[Point], list[CaseResult]]:
    """The (family, dtype, format, TP) points to run, and a SKIP row for each one the backend refuses."""
    formats: list[QuantFormat | None] = [None, *(QUANT_BITS if quant else ())]
    runnable, rows = [], []
    for name in families:
        for dtype in dtypes:
            for fmt in formats:
                for degree in degrees if fmt is None else [d for d in degrees if d == 1]:
                    refused = [
                        v.reason
                        for op in Op
                        if not (v := backend.supports(op, dtype, fmt if op is Op.LINEAR else None))
                    ]
                    if refused:
                        rows.append(_row(backend, _shape(name, degree, fmt), dtype, Status.SKIP, refused[0]))
                    else:
                        runnable.append((name, dtype, fmt, degree))
    return runnable, rows


def _shape(name: str, degree: int, fmt: QuantFormat | None) -> str:
    return f"{name} tp{degree} {fmt.value if fmt else 'float'}"


def run_model_checks(
    backend: OpLevelBackend,
    dtypes: Sequence[torch.dtype] | None = None,
    tp: Sequence[int] | None = None,
    quant: bool = True,
    progress: Progress | None = None,
    families: Sequence[str] | None = None,
) -> list[CaseResult]:
    """Rows ``model:prefill|decode|greedy`` per family x dtype x quant format x TP degree (shape column:
    ``<family> tpN <format>``); ``families`` are ``Family.name``s (default: every family)."""
    names = list(families) if families is not None else [f.name for f in FAMILIES]
    degrees = list(tp) if tp is not None else tp_degrees(backend)
    runnable, rows = _points(backend, names, dtypes_for(backend, dtypes), degrees, quant)
    references = {
        (n, f): reference_trace(family_named(n), f) for n, f in dict.fromkeys((n, f) for n, _, f, _ in runnable)
    }
    traces: dict[Point, Trace | str] = {}
    for done, point in enumerate(runnable):
        name, dtype, fmt, degree = point
        if degree == 1:
            family = family_named(name)
            try:
                forced = references[name, fmt].tokens[:-1]
                model = _model(family, op_table_for(backend, dtype), _state(family, fmt))
                traces[point] = run_sequence(model, forced)
            except Exception as exc:  # a backend that raises is a failed row
                traces[point] = f"raised {type(exc).__name__}: {exc}"
        if progress is not None:
            progress(done + 1, len(runnable))
    tp2 = [(name, dtype, references[name, None].tokens[:-1]) for name, dtype, _, degree in runnable if degree == 2]
    if tp2:
        try:
            traces.update({(n, d, None, 2): t for (n, d, _), t in zip(tp2, tp2_traces(backend, tp2))})
        except Exception as exc:
            traces.update({(n, d, None, 2): f"raised {type(exc).__name__}: {exc}" for n, d, _ in tp2})
    for point in runnable:
        name, dtype, fmt, degree = point
        trace, shape = traces[point], _shape(name, degree, fmt)
        if isinstance(trace, str):
            rows.append(_row(backend, shape, dtype, Status.FAIL, trace))
            continue
        bound = threshold_for("model:logits" if fmt is None else f"model:logits:{fmt.value}", dtype).max_nmse
        for check, status, value, detail in compare(trace, references[name, fmt], bound):
            rows.append(CaseResult(backend.name, check, shape, dtype_name(dtype), status, value, bound, detail))
    return rows
