"""Model-level checks on a tiny GLM: logits NMSE and greedy-token agreement against the CPU float64 reference.

The reference is the GLM graph on ``TorchOps`` in float64 with the same weights (a quantized model's reference
multiplies out its stored weights in float64). It runs a [gMASK] prompt (prefill) and ``steps`` greedy tokens with
the KV cache. The backend then runs the same prompt and, teacher-forced, the reference's tokens through its own cache:
prefill logits, cached-decode logits and each step's greedy choice are compared. A greedy choice that differs from
the reference's is excused only when the two tokens' reference logits are closer than the logits' allowed error (a
near tie), so the agreement check is as strict as the dtype allows and no stricter.

TP=2 runs two ranks (``torch.multiprocessing``, the backend's process-group backend: gloo on the CPU) where the
backend has two devices or is the CPU, for unquantized dtypes (a TP-quantized checkpoint's scales belong to each
rank's slice, so its reference would be a different model).
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
from glm_engine.config import GLMConfig
from glm_engine.conformance.oracle import ORACLE_DTYPE, oracle_table
from glm_engine.conformance.runner import CaseResult, Progress, Status, dtypes_for, synchronize
from glm_engine.conformance.thresholds import threshold_for
from glm_engine.model.glm import GLMModel
from glm_engine.model.weights import GLMWeights, quantize_linears, random_state_dict
from glm_engine.ops.interface import Op, OpTable
from glm_engine.parallel.communicator import Communicator, TorchDistributedCommunicator
from glm_engine.parallel.loading import rank_state_dict
from glm_engine.quant.formats import QuantFormat
from glm_engine.vocab import VocabLayout

# Three layers (layer scales 1..3), four heads (TP 1, 2, 4), widths that are multiples of 32 (groupwise INT4/INT8).
TINY_LAYOUT = VocabLayout(
    text_offset=10, mask=500, gmask=501, smask=502, eod=503, sop=504, eop=505, enc=506, dblock=507, eos=12, pad=0
)
TINY_CONFIG = GLMConfig(
    num_layers=3,
    hidden_size=64,
    num_attention_heads=4,
    inner_hidden_size=96,
    vocab_size=512,
    max_sequence_length=64,
    vocab_layout=TINY_LAYOUT,
)
WEIGHTS_SEED = 11  # random_state_dict's seed: weights chosen to give non-trivial greedy output
PROMPT = (30, 31, 32, 33, 34, 35, 36, 37, 501, 504)  # text, [gMASK], sop
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


def _state(quant: QuantFormat | None) -> dict:
    state = random_state_dict(TINY_CONFIG, WEIGHTS_SEED)
    if quant is None:
        return state
    bits, group = QUANT_BITS[quant]
    return quantize_linears(state, bits, group)


def _model(ops: OpTable, state: dict, comm: Communicator | None = None) -> GLMModel:
    tp, rank = (1, 0) if comm is None else (comm.world_size, comm.rank)
    shard = rank_state_dict(state, TINY_CONFIG, rank, tp)
    weights = GLMWeights.from_state_dict(
        shard, TINY_CONFIG, ops.dtype, ops.device, tp=tp, prepare=ops.prepare_quantized
    )
    return GLMModel(TINY_CONFIG, weights, ops, comm)


def run_sequence(model: GLMModel, forced: Sequence[int] | None = None, steps: int = GREEDY_STEPS) -> Trace:
    """Prefill ``PROMPT``, then ``steps`` cached decode steps feeding ``forced`` tokens (or its own greedy ones)."""
    n, total = len(PROMPT), len(PROMPT) + steps
    mask_position = PROMPT.index(TINY_LAYOUT.gmask)
    positions = torch.tensor([[*range(n), *([mask_position] * steps)]], device=model.device)
    blocked = torch.ones(total, total, dtype=torch.bool).triu(1)
    blocked[:, : n - 1] = False  # the context before sop is bidirectional
    blocked = blocked[None, None].to(model.device)
    cache = model.new_cache(1, total)
    with torch.no_grad():
        prompt = torch.tensor([PROMPT], device=model.device)
        prefill = model.forward(prompt, positions[:, :n], blocked[..., :n, :n], cache)
        tokens, decode = [int(prefill[0, -1].argmax())], []
        for step in range(steps):
            col = n + step
            token = forced[step] if forced is not None else tokens[-1]
            logits = model.forward(
                torch.tensor([[token]], device=model.device),
                positions[:, col : col + 1],
                blocked[..., col : col + 1, : col + 1],
                cache,
            )
            decode.append(logits[0, -1])
            tokens.append(int(logits[0, -1].argmax()))
    synchronize(model.device)
    return Trace(prefill[0].cpu(), torch.stack(decode).cpu(), tokens)


def reference_trace(quant: QuantFormat | None) -> Trace:
    return run_sequence(_model(oracle_table(), _state(quant)))


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
    """One rank: the sequence for each ``(dtype, forced tokens)`` of ``work``; rank 0 saves the traces."""
    backend = get_backend(backend_name)
    assert isinstance(backend, OpLevelBackend)
    if backend.device_type != "cpu":
        torch.get_device_module(backend.device_type).set_device(rank)
    dist.init_process_group(backend.dist_backend, init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        comm = TorchDistributedCommunicator(rank)
        traces = []
        for dtype, forced in work:
            traces.append(run_sequence(_model(op_table_for(backend, dtype, rank), _state(None), comm), forced))
        if rank == 0:
            torch.save(traces, out_file)
    finally:
        dist.destroy_process_group()


def tp2_traces(backend: OpLevelBackend, work: list[tuple[torch.dtype, list[int]]]) -> list[Trace]:
    """The sequence on two ranks of ``backend`` (two processes, started once), per ``(dtype, forced tokens)``."""
    with tempfile.TemporaryDirectory(prefix="glm-engine-conformance-") as folder:
        init_file, out_file = os.path.join(folder, "init"), os.path.join(folder, "traces.pt")
        mp.spawn(_tp_worker, args=(backend.name, work, init_file, out_file), nprocs=2, join=True)
        return torch.load(out_file, weights_only=False)


def tp_degrees(backend: OpLevelBackend) -> list[int]:
    """TP=1 always; TP=2 on the CPU (gloo) or where the backend sees two devices."""
    return [1, 2] if backend.device_type == "cpu" or len(backend.devices()) >= 2 else [1]


def _row(backend: OpLevelBackend, shape: str, dtype: torch.dtype, status: Status, detail: str) -> CaseResult:
    return CaseResult(backend.name, "model", shape, dtype_name(dtype), status, detail=detail)


def run_model_checks(
    backend: OpLevelBackend,
    dtypes: Sequence[torch.dtype] | None = None,
    tp: Sequence[int] | None = None,
    quant: bool = True,
    progress: Progress | None = None,
) -> list[CaseResult]:
    """Rows ``model:prefill|decode|greedy`` per dtype x quant format x TP degree (shape column: ``tpN <format>``)."""
    degrees = list(tp) if tp is not None else tp_degrees(backend)
    formats: list[QuantFormat | None] = [None, *(QUANT_BITS if quant else ())]
    work = [(d, f, t) for d in dtypes_for(backend, dtypes) for f in formats for t in degrees if f is None or t == 1]
    runnable, rows = [], []
    for dtype, fmt, degree in work:
        shape = f"tp{degree} {fmt.value if fmt else 'float'}"
        refused = [v.reason for op in Op if not (v := backend.supports(op, dtype, fmt if op is Op.LINEAR else None))]
        if refused:
            rows.append(_row(backend, shape, dtype, Status.SKIP, refused[0]))
        else:
            runnable.append((dtype, fmt, degree, shape))
    references = {fmt: reference_trace(fmt) for fmt in dict.fromkeys(fmt for _, fmt, _, _ in runnable)}
    traces: dict[tuple[torch.dtype, QuantFormat | None, int], Trace | str] = {}
    for done, (dtype, fmt, degree, _) in enumerate(runnable):
        if degree == 1:
            try:
                forced = references[fmt].tokens[:-1]
                traces[dtype, fmt, 1] = run_sequence(_model(op_table_for(backend, dtype), _state(fmt)), forced)
            except Exception as exc:  # a backend that raises is a failed row
                traces[dtype, fmt, 1] = f"raised {type(exc).__name__}: {exc}"
        if progress is not None:
            progress(done + 1, len(runnable))
    tp2 = [(dtype, references[None].tokens[:-1]) for dtype, _, degree, _ in runnable if degree == 2]
    if tp2:
        try:
            traces.update({(dtype, None, 2): t for (dtype, _), t in zip(tp2, tp2_traces(backend, tp2))})
        except Exception as exc:
            traces.update({(dtype, None, 2): f"raised {type(exc).__name__}: {exc}" for dtype, _ in tp2})
    for dtype, fmt, degree, shape in runnable:
        trace = traces[dtype, fmt, degree]
        if isinstance(trace, str):
            rows.append(_row(backend, shape, dtype, Status.FAIL, trace))
            continue
        bound = threshold_for("model:logits" if fmt is None else f"model:logits:{fmt.value}", dtype).max_nmse
        for name, status, value, detail in compare(trace, references[fmt], bound):
            rows.append(CaseResult(backend.name, name, shape, dtype_name(dtype), status, value, bound, detail))
    return rows
