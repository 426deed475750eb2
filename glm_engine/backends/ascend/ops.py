"""The Ascend op table: the portable ops, with quantized linears on ``torch_npu.npu_weight_quant_batchmatmul``.

``torch_npu`` is imported when the first quantized weight is prepared (the table exists only where the backend is
available, so it imports); tests pass a stand-in module instead.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from glm_engine.backends.ascend.quant import NpuQuantLinear, unsupported_reason
from glm_engine.ops.interface import PackedLinear
from glm_engine.ops.torch_ops import DequantizingLinear, TorchOps
from glm_engine.quant.weight import QuantizedWeight


class AscendOps(TorchOps):
    """TorchOps with quantized linears in torch_npu's weight-quant batch matmul; the reason when it cannot run them."""

    def __init__(self, device: torch.device, dtype: torch.dtype, npu: ModuleType | None = None) -> None:
        super().__init__(device, dtype)
        self._npu = npu
        self.quant_path: dict[str, str] = {}  # format name -> how the last weight of that format is served

    def prepare_quantized(self, weight: QuantizedWeight) -> PackedLinear:
        why = unsupported_reason(weight, self.dtype)
        if why:
            self.quant_path[weight.format.value] = f"dequantize per product: {why}"
            return DequantizingLinear(weight.to(self.device))
        if self._npu is None:
            self._npu = importlib.import_module("torch_npu")
        self.quant_path[weight.format.value] = "torch_npu.npu_weight_quant_batchmatmul"
        return NpuQuantLinear(weight.to(self.device), self.dtype, self._npu)
