"""CPU op implementations: torch's fused paths where they keep the reference semantics exactly.

* attention uses ``scaled_dot_product_attention`` (fp32 softmax, bool mask) for fp32/bf16; the layer scaling is a
  numeric device of fp16 and does not change the math there. Grouped key/value heads go in as they are
  (``enable_gqa=True``, torch 2.5+): on the CPU that gives bit-for-bit the output of repeating them first
  (``tests/test_gqa_backends.py`` checks it on the installed torch) without copying the KV cache each step
  (measured on a 2-core development CPU: 32 query heads over 2 groups, 4096 cached keys, fp32: 1.8 ms against 55 ms
  with the copy). fp16 runs the reference's explicit path, which repeats them.
* fp16 GEMMs with more than a few rows run in fp32 and round the result to fp16: torch's CPU fp16 GEMM is several
  times slower there, and this is the numerics of a GPU fp16 GEMM with fp32 accumulation, which the reference used.
  Decode-sized products (a few rows) stay in fp16, whose CPU matrix-vector kernel is fast and accumulates in fp32;
  converting the weight would cost more than the product (measured: 2.4 ms native vs 25 ms for 4096x4096, 1 row).
* bf16 products of one row (batch-1 decode) run as ``torch.mv`` on AVX-512 CPUs without native bf16, whose kernel
  streams the weight at ~95% of read bandwidth there where ``F.linear`` reaches ~65% (fp32 accumulation, bias added
  before the one bf16 rounding: ``addmv``); on other CPUs ``F.linear`` is the faster one (``features.py``).
* quantized weights run on torch's weight-only int8/int4 kernels with bf16 activations (see ``quant_linear``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glm_engine.backends.cpu.features import one_row_bf16_uses_mv
from glm_engine.backends.cpu.quant_linear import prepare_cpu_quantized
from glm_engine.ops.interface import PackedLinear, expand_groups
from glm_engine.ops.torch_ops import TorchOps, reference_attention, sdpa_takes_enable_gqa
from glm_engine.quant.weight import QuantizedWeight

# Up to this many rows an fp16 GEMM runs natively; above it, in fp32 (crossover measured at ~12 rows on AVX2).
FP16_NATIVE_MAX_ROWS = 8


class CpuOps(TorchOps):
    """TorchOps with CPU-specific fast paths."""

    def linear(self, x: torch.Tensor, weight: torch.Tensor | PackedLinear, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(weight, PackedLinear):
            return super().linear(x, weight, bias)
        one_row = x.numel() == x.shape[-1]
        if one_row and x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and one_row_bf16_uses_mv():
            row = x.reshape(-1)
            out = torch.mv(weight, row) if bias is None else torch.addmv(bias, weight, row)
            return out.reshape(*x.shape[:-1], weight.shape[0])
        if x.dtype != torch.float16 or x.numel() // x.shape[-1] <= FP16_NATIVE_MAX_ROWS:
            return F.linear(x, weight, bias)
        out = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
        return out.to(torch.float16)

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
