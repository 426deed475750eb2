"""CPU op implementations: torch's fused paths where they keep the reference semantics exactly.

* attention uses ``scaled_dot_product_attention`` (fp32 softmax, bool mask) for fp32/bf16; the layer scaling is a
  numeric device of fp16 and does not change the math there.
* fp16 GEMMs run in fp32 and round the result to fp16: torch's CPU fp16 GEMM is several times slower, and this is
  the numerics of a GPU fp16 GEMM with fp32 accumulation, which is what the reference used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glm_engine.ops.torch_ops import TorchOps, reference_attention


class CpuOps(TorchOps):
    """TorchOps with CPU-specific fast paths."""

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if x.dtype != torch.float16:
            return F.linear(x, weight, bias)
        out = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
        return out.to(torch.float16)

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocked: torch.Tensor, layer_scale: float
    ) -> torch.Tensor:
        if q.dtype == torch.float16:
            return reference_attention(q, k, v, blocked, layer_scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=~blocked)
