"""The op interface: the only way the GLM graph computes anything.

A backend hands the graph an :class:`OpTable`; the graph never calls a device API itself. Each op's docstring is
its contract (shapes, dtypes, semantics) and every implementation must meet it; the conformance suite checks
implementations against the portable PyTorch ones in float64. Layout: activations are ``[batch, seq, hidden]``;
attention works on ``[batch, heads, seq, head_dim]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from enum import Enum
from typing import Any, Protocol

import torch

from glm_engine.quant.weight import QuantizedWeight


class Op(str, Enum):
    """Names of the ops a backend implements; ``supports()`` is asked per op."""

    EMBEDDING = "embedding"
    LAYERNORM = "layernorm"
    RMSNORM = "rmsnorm"
    LINEAR = "linear"
    ROTARY = "rotary"
    ATTENTION = "attention"
    GEGLU = "geglu"
    GELU = "gelu"
    SWIGLU = "swiglu"
    DEEPNORM_RESIDUAL = "deepnorm_residual"
    GROUPED_ATTENTION = "grouped_attention"  # attention with fewer key/value heads than query heads (GQA)


class PackedLinear(ABC):
    """A backend's runtime form of a quantized linear weight (made once, at load, by ``OpTable.prepare_quantized``).

    ``packed(x)`` computes ``x @ W.T`` without bias for ``x [..., in]`` in the op table's dtype, where ``W`` is the
    dequantized weight (``half(q) * scale``, see ``glm_engine.quant.weight``); the graph adds the bias.
    """

    def __init__(self, weight: QuantizedWeight) -> None:
        self.format = weight.format
        self.out_features, self.in_features = weight.out_features, weight.in_features

    @abstractmethod
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes this weight occupies on its device in the runtime layout."""


class ModelConfig(Protocol):
    """The numbers every family's config has, under the same names (what runners, caches and generation read)."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    vocab_size: int
    max_sequence_length: int

    @property
    def head_dim(self) -> int: ...

    def tp_axes(self) -> dict[str, int]:
        """What tensor parallelism splits, by name (heads, vocab rows, MLP units): each must divide by the degree."""
        ...

    def tp_problem(self, tp: int) -> str | None:
        """Why ``tp`` cannot split the model beyond :meth:`tp_axes` (grouped key/value heads), or None."""
        ...


class DecodeStepper(Protocol):
    """Runs one cached decode step: one new token per row, the logits of that position ``[b, 1, vocab]``."""

    reason: str  # how the steps run, and why (shown by bench and the notes)

    def step(
        self, cache: Any, input_ids: torch.Tensor, position_ids: torch.Tensor, blocked: torch.Tensor
    ) -> torch.Tensor: ...


class EagerStepper:
    """Each step as a plain ``forward`` call: the default wherever no device graphs replay it."""

    def __init__(self, runner: Any, reason: str = "steps run eagerly") -> None:
        self.runner = runner
        self.reason = reason

    def step(
        self, cache: Any, input_ids: torch.Tensor, position_ids: torch.Tensor, blocked: torch.Tensor
    ) -> torch.Tensor:
        return self.runner.forward(input_ids, position_ids, blocked, cache, last_only=True)


def expand_groups(k: torch.Tensor, v: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Key/value heads ``[b, g, s, d]`` repeated to ``heads`` (each group next to the query heads that read it), for
    attention kernels without grouped-query support; a copy of the cache, so native GQA kernels are preferred."""
    groups = k.shape[1]
    if groups == heads:
        return k, v
    return k.repeat_interleave(heads // groups, dim=1), v.repeat_interleave(heads // groups, dim=1)


class OpTable(ABC):
    """One implementation of every op, bound to a device and a compute dtype."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device = device
        self.dtype = dtype

    def decode_stepper(self, runner: Any, steps: int | None, requested: bool | None) -> DecodeStepper:
        """What runs ``runner``'s cached decode steps on this table's device: eager ``forward`` calls unless the
        backend captures them as device graphs (the ``torch.cuda`` tables do)."""
        return EagerStepper(runner, f"{self.device.type} steps run eagerly (no device graphs on this backend)")

    @abstractmethod
    def embedding(self, input_ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Rows of ``weight [vocab, hidden]`` for ``input_ids [b, s]`` -> ``[b, s, hidden]`` (no scaling)."""

    @abstractmethod
    def layernorm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        """LayerNorm over the last dim with affine weight and bias."""

    @abstractmethod
    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor, eps: float, weight_in_fp32: bool = False) -> torch.Tensor:
        """RMSNorm over the last dim: ``h = x.float() * rsqrt(mean(x.float()^2) + eps)`` in fp32, then the gain.

        ``weight_in_fp32`` False (transformers' native GLM classes): ``weight * h.to(x.dtype)``, a product in the
        activation dtype; True (THUDM's remote code): ``(weight * h).to(x.dtype)``, one rounding at the end
        (``docs/glm-semantics.md``)."""

    @abstractmethod
    def linear(self, x: torch.Tensor, weight: torch.Tensor | PackedLinear, bias: torch.Tensor | None) -> torch.Tensor:
        """``x @ weight.T + bias`` with ``weight [out, in]`` (PyTorch Linear convention), or a quantized weight
        prepared by ``prepare_quantized`` (the product as its dequantized weight computes it, then the bias)."""

    def prepare_linears(
        self, linears: Sequence[tuple[str, torch.Tensor | PackedLinear, torch.Tensor | None]]
    ) -> list[str]:
        """Get ready to run a loaded model's linears, given as ``(label, weight, bias)`` as ``linear`` will see them
        (one layer's and the output layer: the others repeat their shapes), and return notes for the load report.

        A backend that picks kernels by measuring does it here (the CPU: docs/cpu-kernels.md); by default nothing."""
        return []

    def linear_kernel(self, rows: int, weight: torch.Tensor | PackedLinear, bias: torch.Tensor | None) -> str:
        """The kernel ``linear`` runs for ``rows`` rows of this weight and why, for reports ("" when there is
        nothing to say)."""
        return ""

    @abstractmethod
    def prepare_quantized(self, weight: QuantizedWeight) -> PackedLinear:
        """This backend's runtime layout for a stored quantized weight (on this table's device), made at load.

        Raise BackendError when the weight's format is not one the backend runs (``Backend.supports`` says so
        before loading)."""

    @abstractmethod
    def rotary(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate-half rotary embedding of ``q, k [b, s, heads, d]`` with per-token ``cos, sin [b, s, 1, d]``.

        ``x' = x * cos + rotate_half(x) * sin`` where ``rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2])``, so
        dimension ``i`` pairs with ``i + d/2`` (GPT-NeoX style, docs/glm-semantics.md#rotary-embedding).
        """

    @abstractmethod
    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        blocked: torch.Tensor,
        layer_scale: float,
    ) -> torch.Tensor:
        """``softmax(q k^T / sqrt(d))`` over unblocked keys, times ``v``, with the softmax in fp32.

        ``q [b, h, sq, d]``, ``k, v [b, g, sk, d]`` where ``g`` divides ``h`` (grouped-query attention: query head
        ``i`` reads key/value head ``i // (h / g)``; ``g == h`` is plain multi-head attention), ``blocked`` bool
        broadcastable to ``[b, 1, sq, sk]`` with True = may not attend. ``layer_scale`` is the reference's query-key
        layer scaling coefficient (``layer_id + 1``; 1 for families without it): q is divided by it before the
        product and the scores multiplied by it in fp32, which keeps fp16 scores finite in deep layers and leaves the
        math unchanged. Every query row has at least one unblocked key. Returns ``[b, h, sq, d]``.
        """

    @abstractmethod
    def geglu(self, x: torch.Tensor) -> torch.Tensor:
        """GeGLU: with ``x1, x2 = x.chunk(2, -1)`` return ``x1 * gelu_erf(x2)`` (first half linear, second gated)."""

    @abstractmethod
    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        """GeLU with the tanh approximation, written as ChatGLM-6B's ``gelu_impl`` (OpenAI's form):
        ``0.5 * x * (1 + tanh(0.7978845608028654 * x * (1 + 0.044715 * x * x)))``, elementwise in ``x``'s dtype."""

    @abstractmethod
    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        """SwiGLU: with ``gate, up = x.chunk(2, -1)`` return ``silu(gate) * up`` in ``x``'s dtype."""

    @abstractmethod
    def deepnorm_residual(self, normed: torch.Tensor, branch: torch.Tensor, alpha: float) -> torch.Tensor:
        """DeepNorm residual as GLM-130B computes it: ``normed * alpha + branch`` (two roundings in low precision)."""
