"""``--verify``: run the exported graph in ONNX Runtime next to glm-engine's own model and compare, twice:

1. against the exact reference: the model over ``TorchOps`` in fp32 with each quantized weight dequantized exactly
   (``q * scale`` in fp32, what DequantizeLinear and level-0 MatMulNBits compute), held to a tight threshold, so a
   wrong scale or a misplaced nibble cannot hide inside a loose quantized tolerance;
2. against glm-engine's CPU backend in the export's dtype and quantization (what ``run --backend cpu`` gives).

Two rows of different lengths (a ``[gMASK]`` and a ``[MASK]`` prompt, left-padded as the family's generation pads them,
with its own positions: ``Family.generation_batch``; for the causal families, which have no blanks, the ids
``Family.blank_tokens`` names are plain text and the mask is causal) are prefilled from an empty past, then decoded
greedily for
``steps`` cached steps. Each step compares the logits (NMSE
against the engine's) and the greedy tokens; both runners are fed the engine's token so one near-tie cannot make the
rest of the comparison meaningless. A differing token fails the comparison unless it is a near tie in the engine's
own logits: where the engine rounds its logits (the CPU backend's quantized kernels return bf16), two tokens within
one rounding step of the maximum are equally right, and argmax's choice between them says nothing about the export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from glm_engine.backends.base import dtype_name
from glm_engine.engine import load
from glm_engine.engine.source import open_source
from glm_engine.errors import InputError
from glm_engine.exported import read_exported
from glm_engine.generation.masks import AlignedBatch
from glm_engine.model.graph import DecoderModel
from glm_engine.model.registry import family_of
from glm_engine.model.weights import ModelWeights, ReadRequest
from glm_engine.ops.torch_ops import DequantizingLinear, TorchOps
from glm_engine.quant.spec import QuantSpec

# NMSE thresholds per graph dtype, against the engine's CPU backend in the same dtype. fp32: ORT and torch differ only
# in summation order (measured ~2e-13 on the demo model). fp16: one fp16 rounding per op may land on the other side
# (measured ~1e-7). Quantized: the CPU backend rounds activations and scales to bf16 for its int8/int4 kernels
# (~1e-5 NMSE, backends/cpu/quant_linear.py) where the graph computes in fp32 (measured 1e-6 to 2e-5).
NMSE_THRESHOLDS = {torch.float32: 1e-9, torch.float16: 1e-4, torch.bfloat16: 1e-3}
QUANTIZED_NMSE_THRESHOLD = 5e-4
# MatMulNBits at accuracy level 4 quantizes activations to int8 per block (~5e-3 relative,
# docs/export.md#quantized-linears-in-onnx; measured NMSE 2e-4 to 6e-4 on the demo model): a deliberate
# speed-for-accuracy trade, so it is held to its own threshold and greedy tokens must still agree.
INT8_ACTIVATIONS_NMSE_THRESHOLD = 5e-3
# Against the exact reference (fp32, weights dequantized in fp32 as the graph does): ORT and torch differ only in
# summation order, ~1e-12 NMSE on the demo model for every quantized form at level 0; every row's scale off by +-1%
# gives 1e-4 to 3e-4 (tests/test_onnx_export.py), which the CPU-backend comparison (5e-4) would let through.
EXACT_QUANTIZED_NMSE_THRESHOLD = 1e-6
DEFAULT_STEPS = 8
VERIFY_PROMPT_TOKENS = 9  # the longer of the two verify rows (verify_rows)
MIN_STEPS = 2  # the prefill's greedy token plus one cached decode step
VERIFY_SEED = 0


def nmse(got: torch.Tensor, want: torch.Tensor) -> float:
    """``mean((got - want)^2) / mean(want^2)`` in float64."""
    got, want = got.double(), want.double()
    return float(((got - want) ** 2).mean() / (want**2).mean().clamp_min(1e-300))


@dataclass
class VerifyReport:
    threshold: float
    prefill_nmse: float = 0.0
    decode_nmse: list[float] = field(default_factory=list)
    engine_tokens: list[list[int]] = field(default_factory=list)
    ort_tokens: list[list[int]] = field(default_factory=list)
    against: str = "the engine"
    also: VerifyReport | None = None  # a second comparison that must pass too
    tie_tolerance: float = 0.0  # relative: ORT's token may differ where the engine's logit for it is this close to max
    near_ties: int = 0  # differing tokens accepted as near ties

    @property
    def differing(self) -> int:
        return sum(w != g for want, got in zip(self.engine_tokens, self.ort_tokens) for w, g in zip(want, got))

    @property
    def tokens_match(self) -> bool:
        return self.differing == self.near_ties and len(self.engine_tokens) == len(self.ort_tokens)

    @property
    def passed(self) -> bool:
        worst = max([self.prefill_nmse, *self.decode_nmse])
        return worst <= self.threshold and self.tokens_match and (self.also is None or self.also.passed)

    def _tokens_verdict(self) -> str:
        if not self.tokens_match:
            return f"differ: {self.engine_tokens} vs ORT {self.ort_tokens}"
        if self.near_ties:
            return f"identical but for {self.near_ties} near tie(s) within {self.tie_tolerance:.1e} of the maximum"
        return "identical"

    def describe(self) -> str:
        worst = max(self.decode_nmse, default=0.0)
        verdict = "PASS" if self.passed else "FAIL"
        own = (
            f"against {self.against}: prefill NMSE {self.prefill_nmse:.2e}, worst of {len(self.decode_nmse)} decode "
            f"steps {worst:.2e} (threshold {self.threshold:.0e}); greedy tokens " + self._tokens_verdict()
        )
        if self.also is None:
            return f"{verdict}: {own}"
        return f"{verdict}: {own}\n  {self.also.describe().split(': ', 1)[1]}"


def verify_rows(gmask: int, mask: int, sop: int, text_ids: range, seed: int = VERIFY_SEED) -> list[list[int]]:
    """A ``[gMASK]`` row of 9 tokens (``VERIFY_PROMPT_TOKENS``) and a ``[MASK]`` row of 5 (different lengths: the
    batch is padded), from the model's special ids and words drawn from ``text_ids``."""
    gen = torch.Generator().manual_seed(seed)
    words = torch.randint(text_ids.start, text_ids.stop, (10,), generator=gen).tolist()
    return [[*words[:7], gmask, sop], [words[7], mask, *words[8:10], sop]]


def verify_batch(config: Any, steps: int) -> AlignedBatch:
    """The two verify rows aligned as the family's generator aligns them, with room for ``steps`` tokens."""
    family = family_of(config)
    tokens = family.blank_tokens(config)
    rows = verify_rows(tokens.gmask, tokens.mask, tokens.sop, tokens.text)
    return family.generation_batch(config, rows, [steps] * len(rows))


def compare_runners(
    engine_runner: object,
    ort_runner: object,
    steps: int,
    threshold: float,
    against: str = "the engine",
    tie_tolerance: float = 0.0,
) -> VerifyReport:
    """Prefill and ``steps`` greedy cached steps on both runners (see the module docstring); ``tie_tolerance``: how
    close (relative to the row's largest logit) the engine's logit for ORT's token must be to count as a near tie."""
    aligned = verify_batch(engine_runner.config, steps)
    rows = aligned.input_ids.shape[0]
    start = aligned.context_length
    report = VerifyReport(threshold, against=against, tie_tolerance=tie_tolerance)
    caches = [runner.new_cache(rows, aligned.input_ids.shape[1]) for runner in (engine_runner, ort_runner)]
    with torch.inference_mode():
        args = (aligned.input_ids[:, :start], aligned.position_ids[..., :start], aligned.blocked[:, :, :start, :start])
        want = engine_runner.forward(*args, caches[0]).float().cpu()
        got = ort_runner.forward(*args, caches[1]).float().cpu()
        report.prefill_nmse = nmse(got, want)
        for step in range(steps):
            want_tokens, got_tokens = want[:, -1].argmax(-1), got[:, -1].argmax(-1)
            report.engine_tokens.append(want_tokens.tolist())
            report.ort_tokens.append(got_tokens.tolist())
            report.near_ties += count_near_ties(want[:, -1], want_tokens, got_tokens, tie_tolerance)
            if step == steps - 1:
                break
            column = start + step
            args = (
                want_tokens.unsqueeze(1),
                aligned.position_ids[..., column : column + 1],
                aligned.blocked[:, :, column : column + 1, : column + 1],
            )
            want = engine_runner.forward(*args, caches[0]).float().cpu()
            got = ort_runner.forward(*args, caches[1]).float().cpu()
            report.decode_nmse.append(nmse(got, want))
    return report


def count_near_ties(logits: torch.Tensor, want_tokens: torch.Tensor, got_tokens: torch.Tensor, tolerance: float) -> int:
    """Rows where ``got_tokens`` differs from the argmax ``want_tokens`` of ``logits`` [rows, vocab] but its logit is
    within ``tolerance * |max|`` of the maximum."""
    top = logits.gather(1, want_tokens[:, None])[:, 0]
    theirs = logits.gather(1, got_tokens[:, None])[:, 0]
    near = (top - theirs) <= tolerance * top.abs()
    return int(((want_tokens != got_tokens) & near).sum())


def check_verifiable(max_seq: int, dtype: torch.dtype = torch.float32) -> None:
    """An InputError when an export of ``max_seq`` positions is too short for verify's prompt and two steps, or is in
    a dtype ONNX Runtime cannot be fed (bf16)."""
    from glm_engine.backends.onnxruntime.runner import NUMPY_DTYPES

    if dtype not in NUMPY_DTYPES:
        raise InputError(
            f"--verify runs the export in ONNX Runtime, which cannot feed {dtype_name(dtype)} graphs (numpy has no "
            "bfloat16): verify an fp32 or fp16 export, or drop --verify for a bf16 one meant for TensorRT"
        )
    if max_seq < VERIFY_PROMPT_TOKENS + MIN_STEPS:
        raise InputError(
            f"--verify runs a {VERIFY_PROMPT_TOKENS}-token prompt and at least {MIN_STEPS} greedy steps, which needs "
            f"--max-seq >= {VERIFY_PROMPT_TOKENS + MIN_STEPS}; got {max_seq}"
        )


class ExactDequantizingLinear(DequantizingLinear):
    """``x @ (q * scale)^T`` with the product formed in fp32 (the reference's kernels round it to fp16 first): what
    DequantizeLinear and level-0 MatMulNBits compute from the same integers and fp16 scales."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        q = w.values().float().view(w.out_features, w.groups, -1)
        weight = (q * w.scale.float()[:, :, None]).view(w.out_features, w.in_features)
        return torch.nn.functional.linear(x, weight.to(x.dtype))


def exact_reference(source: str, config: Any, quant: QuantSpec | None, output: QuantSpec | None = None) -> DecoderModel:
    """The model of ``source`` over ``TorchOps`` in fp32, read and quantized as the export reads it, with each quantized
    weight dequantized exactly; ``output``: the format of a quantized output projection (``--quant-output``)."""
    model = open_source(source, config)
    layout = model.family.weight_layout(model.config)
    separate = output if layout.output_key is not None else None
    tensors = model.reader.read(ReadRequest(dtype=torch.float32, quant=quant, output_quant=separate))
    tied = output if layout.output_key is None else None
    exact = lambda weight: ExactDequantizingLinear(weight.to("cpu"))  # noqa: E731
    weights = ModelWeights.assemble(layout, tensors, torch.float32, "cpu", exact, tied)
    return DecoderModel(model.config, weights, TorchOps(torch.device("cpu"), torch.float32))


def _cpu_model(
    source: str, config: Any, dtype: torch.dtype, request: QuantSpec | None, output: bool, folder: str
) -> object:
    """``source`` on glm-engine's CPU backend in the export's dtype, quantized as for :func:`exact_reference`, with
    the tokenizer the export carries (``load`` wants one; a checkpoint exported with ``--tokenizer`` has none)."""
    engine = load(
        source, backend="cpu", dtype=dtype, config=config, tokenizer=folder, quant=request, quant_output=output
    )
    return engine.runner


def verify_export(
    folder: str,
    source: str,
    config: str | None = None,
    provider: str | None = "cpu",
    steps: int = DEFAULT_STEPS,
) -> VerifyReport:
    """Compare the export in ``folder`` with ``source`` (the checkpoint or preset it was exported from; a ChatGLM
    folder for a ChatGLM export): first with the exact fp32 reference (:func:`exact_reference`), then with ``source``
    loaded on glm-engine's CPU backend in the export's dtype and quantization. Both must pass. One model is held
    next to the ORT session at a time."""
    from glm_engine.backends.onnxruntime.backend import OnnxRuntimeBackend

    info = read_exported(folder)
    check_verifiable(info.config.max_sequence_length, info.dtype)
    steps = min(steps, info.config.max_sequence_length - VERIFY_PROMPT_TOKENS)  # prompt + steps fit the export
    quant = info.description.get("quantization")
    spec = None if quant is None else QuantSpec(quant["bits"], quant["group_size"])
    stored = None if spec is None else open_source(source, config).reader.stored_quant
    request = spec if stored is None else None  # a quantized checkpoint loads quantized as it is
    output = spec if quant is not None and quant.get("output") else None  # --quant-output
    fast = spec is not None and quant.get("accuracy_level") == 4
    exact_threshold = NMSE_THRESHOLDS[info.dtype]
    if fast:
        exact_threshold = INT8_ACTIVATIONS_NMSE_THRESHOLD
    elif spec is not None and info.dtype == torch.float32:
        exact_threshold = EXACT_QUANTIZED_NMSE_THRESHOLD
    ort_runner = OnnxRuntimeBackend().load_runner(folder, provider=provider)  # each comparison makes its own cache
    reference = exact_reference(source, config, request, output)
    report = compare_runners(reference, ort_runner, steps, exact_threshold, "the exact fp32 reference")
    del reference

    threshold = NMSE_THRESHOLDS[info.dtype]
    if spec is not None:
        threshold = INT8_ACTIVATIONS_NMSE_THRESHOLD if fast else QUANTIZED_NMSE_THRESHOLD
    engine_runner = _cpu_model(source, config, info.dtype, request, output is not None, folder)
    # The CPU backend's quantized kernels return bf16, so its logits are only that precise; float paths round to dtype.
    rounding = torch.bfloat16 if spec is not None else info.dtype
    tolerance = 0.0 if rounding == torch.float32 else torch.finfo(rounding).eps
    report.also = compare_runners(engine_runner, ort_runner, steps, threshold, "the CPU backend", tolerance)
    return report
