"""Every tolerance of the conformance suite, in one table: the largest NMSE a check may show, with the reason.

NMSE is ``sum((out - oracle)^2) / sum(oracle^2)`` against the float64 oracle fed the same rounded inputs. A correct
op's NMSE is set by its output dtype: rounding alone gives about ``u^2 / 3`` with unit roundoff ``u`` (fp32 2^-24,
fp16 2^-11, bf16 2^-8: ~1e-15, ~8e-8, ~5e-6), plus what intermediate roundings add. Each bound sits well above what
correct implementations measure (CPU numbers in the notes, seeds varied) and well below what the self-test's broken
ops produce (1e-3 and up), so a failure means a semantic bug, not a different but legitimate order of sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glm_engine.backends.base import dtype_name
from glm_engine.errors import BackendError


@dataclass(frozen=True)
class Threshold:
    max_nmse: float
    note: str


FP32, BF16, FP16 = "fp32", "bf16", "fp16"

# ``check`` is an op name, ``attention:prefill|decode``, ``linear:<quant format>`` or ``model:<what>``.
# check: (fp32, bf16, fp16, why). Measured worst on the CPU backend and TorchOps over seeds, for scale: fp32 <= 2e-13,
# bf16 <= 2e-5 (attention), fp16 <= 4e-7 (attention); quantized GEMMs ~1e-5 in every dtype.
_TABLE: dict[str, tuple[float, float, float, str]] = {
    "embedding": (0.0, 0.0, 0.0, "a gather: exact copies of the (rounded) rows"),
    "layernorm": (1e-10, 5e-5, 1e-6, "mean/variance reductions, then one rounding"),
    "linear": (1e-10, 5e-5, 1e-6, "sums of up to 512 products with fp32 accumulation (TF32 fails fp32 by design)"),
    "rotary": (1e-10, 5e-5, 1e-6, "two products and a sum per element, each rounded in the dtype"),
    "attention:prefill": (1e-10, 1e-4, 2e-6, "two GEMMs around an fp32 softmax; probabilities rounded to the dtype"),
    "attention:decode": (1e-10, 1e-4, 2e-6, "one query row over up to 257 keys; the numerics of prefill"),
    "geglu": (1e-10, 5e-5, 1e-6, "erf GeLU and a product, each rounded in the dtype"),
    "gelu": (1e-10, 5e-5, 2e-6, "the tanh form's roundings in the dtype, as ChatGLM-6B computes it"),
    "deepnorm_residual": (1e-10, 5e-5, 1e-6, "a product and a sum, each rounded (GLM-130B's two roundings)"),
    # RMSNorm's two variants differ by one rounding of the output (two roundings against one), which is below what an
    # NMSE against the float64 oracle can tell apart: these rows catch a wrong statistic, eps or gain, not that.
    "rmsnorm:weight-in-dtype": (1e-10, 5e-5, 1e-6, "fp32 statistics, h rounded to the dtype, then the gain rounded"),
    "rmsnorm:weight-in-fp32": (1e-10, 5e-5, 1e-6, "fp32 statistics and gain, one rounding to the dtype"),
    "swiglu": (1e-10, 5e-5, 1e-6, "silu and a product, each rounded in the dtype"),
    "grouped_attention:prefill": (1e-10, 1e-4, 2e-6, "attention's numerics; key/value heads shared by query heads"),
    "grouped_attention:decode": (1e-10, 1e-4, 2e-6, "one query row per head over a grouped cache of up to 257 keys"),
}
# Quantized GEMMs: the oracle multiplies out the same stored weight in float64; kernels may round activations, scales
# and outputs to bf16 (the CPU's do, ~1e-5), far below quantization's own error (1e-4 INT8, 1e-2 INT4) that
# a wrong scale or nibble order produces.
_QUANT_BOUND = 1e-4
for _format in ("int8-rowwise", "int8-groupwise", "int4-rowwise", "int4-groupwise"):
    _TABLE[f"linear:{_format}"] = (_QUANT_BOUND, _QUANT_BOUND, _QUANT_BOUND, "dequantized weight in float64 as oracle")

# Tiny-model logits (3 layers) against the float64 graph with the same weights: weight rounding to the dtype plus
# every op's rounding, through the layers. Measured on the CPU: fp32 7e-14, bf16 1e-4, fp16 1.5e-6; quantized 1.5e-5
# in fp32/fp16 (the CPU kernels' bf16 roundings), 1e-4 in bf16.
_TABLE["model:logits"] = (1e-9, 1e-3, 2e-5, "3 layers of rounding, weights rounded to the dtype too")
for _format in ("int8-rowwise", "int8-groupwise", "int4-rowwise", "int4-groupwise"):
    _TABLE[f"model:logits:{_format}"] = (2e-4, 1e-3, 2e-4, "quantized GEMMs may round to bf16; 3 layers of it")

THRESHOLDS: dict[tuple[str, str], Threshold] = {
    (check, dtype): Threshold(bound, note)
    for check, (*bounds, note) in _TABLE.items()
    for dtype, bound in zip((FP32, BF16, FP16), bounds)
}


def threshold_for(check: str, dtype: torch.dtype) -> Threshold:
    """The bound for ``check`` in ``dtype``; a BackendError if the table has no row (a new check needs one)."""
    key = (check, dtype_name(dtype))
    if key not in THRESHOLDS:
        raise BackendError(f"no conformance threshold for {check} in {key[1]}: add a row to conformance/thresholds.py")
    return THRESHOLDS[key]
