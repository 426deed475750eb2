"""CPU op implementations: torch's fused paths where they keep the reference semantics exactly.

* attention uses ``scaled_dot_product_attention`` (fp32 softmax, bool mask) for fp32/bf16; the layer scaling is a
  numeric device of fp16 and does not change the math there. Grouped key/value heads go in as they are
  (``enable_gqa=True``, torch 2.5+): on the CPU that gives bit-for-bit the output of repeating them first
  (``tests/test_gqa_backends.py`` checks it on the installed torch) without copying the KV cache each step
  (measured on a 2-core development CPU: 32 query heads over 2 groups, 4096 cached keys, fp32: 1.8 ms against 55 ms
  with the copy). fp16 runs the reference's explicit path, which repeats them.
* linears run the kernel chosen for their dtype, row class (1, 2-8, more rows), shape and bias by timing the
  candidates on this CPU (``F.linear``, ``addmv``, ``mv`` then the bias, each with oneDNN on or off, and for fp16/bf16
  GEMMs of many rows fp32): the fastest one-row bf16 kernel differs 3-8x between CPUs (``kernel_choice``,
  docs/cpu-kernels.md). With ``GLM_ENGINE_CPU_KERNELS=off``: ``F.linear``, and fp16 products of more than 8 rows in
  fp32 rounded to fp16 (torch's CPU fp16 GEMM is several times slower there; a GPU fp16 GEMM's numerics).
* quantized weights run on torch's weight-only int8/int4 kernels with bf16 activations (see ``quant_linear``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from glm_engine.backends.cpu.kernel_chooser import Linear, chooser, packed_kernel_name
from glm_engine.backends.cpu.quant_linear import prepare_cpu_quantized
from glm_engine.ops.interface import PackedLinear, expand_groups
from glm_engine.ops.torch_ops import TorchOps, reference_attention, sdpa_takes_enable_gqa
from glm_engine.quant.weight import QuantizedWeight


class CpuOps(TorchOps):
    """TorchOps with CPU-specific fast paths."""

    def linear(self, x: torch.Tensor, weight: torch.Tensor | PackedLinear, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(weight, PackedLinear):
            return super().linear(x, weight, bias)
        return chooser().dense(x.numel() // x.shape[-1], weight, bias).run(x, weight, bias)

    def prepare_linears(self, linears: Sequence[Linear]) -> list[str]:
        return chooser().prepare(linears)

    def linear_kernel(self, rows: int, weight: torch.Tensor | PackedLinear, bias: torch.Tensor | None) -> str:
        if isinstance(weight, PackedLinear):
            return f"{packed_kernel_name(weight)} (the format's only kernel)"
        return chooser().choice_for(rows, weight, bias).describe()

    def prepare_quantized(self, weight: QuantizedWeight) -> PackedLinear:
        return prepare_cpu_quantized(weight)

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocked: torch.Tensor, layer_scale: float
    ) -> torch.Tensor:
        if q.dtype == torch.float16:
            return reference_attention(q, k, v, blocked, layer_scale)
        if k.shape[1] != q.shape[1] and sdpa_takes_enable_gqa():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=~blocked, enable_gqa=True)
        k, v = expand_groups(k, v, q.shape[1])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=~blocked)
