"""The op table of the ``torch.cuda`` backends (CUDA, ROCm/DCU): the portable ops plus fused quantized linears.

Quantized weights run through the Triton dequant-GEMM kernels (``glm_engine.kernels.triton``) when Triton imports and
the format and compute dtype suit them; otherwise through the portable :class:`DequantizingLinear`, with the reason
kept on the table (``quant_path``) and shown by ``Backend.supports``.
"""

from __future__ import annotations

import torch

from glm_engine.kernels.triton.linear import kernel_verdict
from glm_engine.ops.interface import PackedLinear
from glm_engine.ops.torch_ops import DequantizingLinear, TorchOps
from glm_engine.quant.weight import QuantizedWeight


class CudaOps(TorchOps):
    """TorchOps with Triton-backed quantized linears."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(device, dtype)
        self.quant_path: dict[str, str] = {}  # format name -> how the last weight of that format is served

    def prepare_quantized(self, weight: QuantizedWeight) -> PackedLinear:
        ok, why = kernel_verdict(weight, self.dtype)
        if ok:
            from glm_engine.kernels.triton.linear import TritonQuantLinear

            self.quant_path[weight.format.value] = why
            return TritonQuantLinear(weight.to(self.device))
        self.quant_path[weight.format.value] = f"dequantize per product: {why}"
        return DequantizingLinear(weight.to(self.device))
