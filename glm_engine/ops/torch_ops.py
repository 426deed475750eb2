"""Portable PyTorch implementations of every op: the reference semantics, runnable on any torch device.

These follow the reference's order of operations and roundings (docs/glm-semantics.md#forward-pass-and-op-order), so in
fp16 they reproduce SwissArmyTransformer closely and in float64 they are the conformance oracle. Backends subclass
:class:`TorchOps` and override only what they can do faster without changing the semantics.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from glm_engine.ops.interface import OpTable, PackedLinear, expand_groups
from glm_engine.quant.weight import QuantizedWeight

# Value the reference writes into blocked attention scores before the fp32 rescale (SAT's non-apex path).
MASKED_SCORE = -10000.0
# sqrt(2 / pi) as ChatGLM-6B's gelu_impl writes it, and the cubic coefficient of the tanh approximation.
GELU_TANH_SCALE = 0.7978845608028654
GELU_TANH_CUBIC = 0.044715
# scaled_dot_product_attention takes ``enable_gqa`` from torch 2.5 on (pytorch/pytorch#132689); asked of the op's
# schema, which also answers for pre-release builds such as "2.5.0a0+git..." that a version comparison would misjudge.
SDPA_GQA_ARGUMENT = "enable_gqa"


@lru_cache(maxsize=1)
def sdpa_takes_enable_gqa() -> bool:
    """Whether this torch's ``scaled_dot_product_attention`` has ``enable_gqa``, which reads grouped key/value heads
    in place instead of needing them repeated (a copy of the cache) first."""
    schema = torch.ops.aten.scaled_dot_product_attention.default._schema
    return any(argument.name == SDPA_GQA_ARGUMENT for argument in schema.arguments)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``cat(-x[..., d/2:], x[..., :d/2])``: pairs dimension i with i + d/2."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocked: torch.Tensor, layer_scale: float
) -> torch.Tensor:
    """Attention exactly as SAT's ``attention_fn`` without apex: layer-scaled q, masked fill, fp32 softmax; grouped
    key/value heads are repeated for the query heads that read them."""
    k, v = expand_groups(k, v, q.shape[1])
    q = q / (math.sqrt(q.shape[-1]) * layer_scale)
    scores = torch.matmul(q, k.transpose(-1, -2))
    scores = scores.masked_fill(blocked, MASKED_SCORE)
    probs = torch.softmax(scores.float() * layer_scale, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


class DequantizingLinear(PackedLinear):
    """The portable quantized linear: keeps the stored form (1 or 0.5 bytes per weight plus scales) and
    dequantizes it for each product, as the reference's kernels do. Correct everywhere; backends with fused
    dequant-GEMM kernels replace it. Also the oracle those kernels are tested against."""

    def __init__(self, weight: QuantizedWeight) -> None:
        super().__init__(weight)
        self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.dequantize(x.dtype))

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes


class TorchOps(OpTable):
    """Every op in plain PyTorch with the reference's numerics; valid on every device torch supports."""

    def embedding(self, input_ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, weight)

    def layernorm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)

    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor, eps: float, weight_in_fp32: bool = False) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return (weight * h).to(x.dtype) if weight_in_fp32 else weight * h.to(x.dtype)

    def linear(self, x: torch.Tensor, weight: torch.Tensor | PackedLinear, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(weight, PackedLinear):
            out = weight(x)
            return out if bias is None else out + bias
        return F.linear(x, weight, bias)

    def prepare_quantized(self, weight: QuantizedWeight) -> PackedLinear:
        return DequantizingLinear(weight.to(self.device))

    def rotary(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocked: torch.Tensor, layer_scale: float
    ) -> torch.Tensor:
        return reference_attention(q, k, v, blocked, layer_scale)

    def geglu(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        # contiguous: torch's CPU erf is vectorised on contiguous input only, so a strided half of several rows would
        # round differently from the same row alone (the serving core's batch invariance, docs/serving.md)
        return x1 * F.gelu(x2.contiguous())

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(GELU_TANH_SCALE * x * (1.0 + GELU_TANH_CUBIC * x * x)))

    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up

    def deepnorm_residual(self, normed: torch.Tensor, branch: torch.Tensor, alpha: float) -> torch.Tensor:
        return normed * alpha + branch
