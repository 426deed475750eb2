"""The oracle: the portable ops (``TorchOps``) on the CPU in float64, fed the very values the backend is fed.

Inputs are rounded to the dtype under test first and then widened to float64, so the measured error is the op's own
(its accumulation, its intermediate roundings, its output rounding), never the rounding of its inputs. A quantized
weight is the same ``QuantizedWeight`` on both sides: the oracle's ``prepare_quantized`` multiplies it out
(``half(q) * scale``, the stored format's definition) and computes the product in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from glm_engine.conformance.cases import Inputs, OpCase
from glm_engine.ops.interface import OpTable
from glm_engine.ops.torch_ops import TorchOps
from glm_engine.quant.weight import QuantizedWeight

ORACLE_DTYPE = torch.float64


def oracle_table() -> OpTable:
    return TorchOps(torch.device("cpu"), ORACLE_DTYPE)


def _convert(value: Any, dtype: torch.dtype, device: torch.device) -> Any:
    if isinstance(value, QuantizedWeight):
        return value.to(device)
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
    return value


def to_backend(inputs: Inputs, dtype: torch.dtype, device: torch.device) -> Inputs:
    """The inputs as the backend gets them: floating tensors in ``dtype`` on ``device``."""
    return {name: _convert(value, dtype, device) for name, value in inputs.items()}


def to_oracle(inputs: Inputs, dtype: torch.dtype) -> Inputs:
    """The inputs as the oracle gets them: floating tensors rounded to ``dtype``, then widened to float64."""
    rounded = to_backend(inputs, dtype, torch.device("cpu"))
    return to_backend(rounded, ORACLE_DTYPE, torch.device("cpu"))


def expected_outputs(case: OpCase, inputs: Inputs, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """What ``case`` must produce (in float64) for ``inputs`` under test in ``dtype``."""
    ops = oracle_table()
    oracle_inputs = case.prepare(ops, to_oracle(inputs, dtype))
    with torch.no_grad():
        return case.run(ops, oracle_inputs)


def nmse(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    """Normalised mean squared error ``sum((a - e)^2) / sum(e^2)`` over all outputs together, in float64 (NaN when
    ``actual`` holds a NaN)."""
    error = reference = 0.0
    for a, e in zip(actual, expected):
        a, e = a.detach().to("cpu", torch.float64), e.to(torch.float64)
        error += float(((a - e) ** 2).sum())
        reference += float((e * e).sum())
    return error / max(reference, torch.finfo(torch.float64).tiny)
