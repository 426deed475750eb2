"""Attention on the ``torch.cuda`` backends: which implementation runs a call, and why, decided from facts alone.

The machinery is shared (:class:`AttentionPolicy`, the SDPA path); each backend builds its own policy from its
device's facts (``cuda_policy`` in ``backends/cuda/ops.py``, ``rocm_policy`` in ``backends/rocm_dcu/ops.py``).

Three implementations meet the op contract (``OpTable.attention``):

- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with ``attn_mask = ~blocked`` and
  ``scale = 1/sqrt(d)``. Equivalent to the reference: the reference divides q by ``sqrt(d) * layer_scale``, fills
  blocked scores with -10000 and multiplies by ``layer_scale`` in fp32 before the softmax, which is
  ``softmax(q k^T / sqrt(d))`` over unblocked keys, exactly, up to roundings. The layer scaling exists only to keep
  *fp16* scores below 65504 in deep layers; SDPA's fused kernels form the scores and the softmax in fp32
  accumulators and never store fp16 scores, so it is not needed and leaving it out removes
  two roundings. In fp16/bf16 on a device only the fused kernels are allowed (``sdpa_attention``). A blocked key
  contributes ``exp(-inf) = 0`` here and ``exp(-10000 * layer_scale - max) = 0`` in the
  reference's fp32 softmax; the two differ only for a row with every key blocked (NaN here, uniform there), which
  the contract rules out (every query row has an unblocked key; padded rows attend to themselves). With a bool mask
  torch picks the memory-efficient kernel (flash-attention takes no arbitrary mask; GLM's prefix-bidirectional mask
  is neither causal nor absent), else its math path. Used for prefill (and fp32).
- ``triton_decode``: the split-K kernel of :mod:`glm_engine.kernels.triton.decode_attention` for one query row per
  head in fp16/bf16: SDPA's kernels tile queries by 64-128 rows and so waste most of their work at ``sq = 1``, and
  the decode step is a bandwidth problem that wants many programs per head.
- ``reference``: the portable explicit fp32-softmax path (``reference_attention``): where no fused kernel exists on
  the device (ROCm archs without CK/AOTriton attention in torch), or as the fallback of last resort.

Grouped key/value heads (``k, v [b, g, sk, d]``, ``g`` dividing ``h``): the decode kernel reads them in place. SDPA
reads them in place with ``enable_gqa=True`` (torch 2.5+) when one of its fused kernels takes the call, which is
asked of torch's own dispatcher before the call (``torch.backends.cuda.can_use_*_attention`` in
:func:`grouped_sdpa_verdict`); otherwise they are repeated first (``expand_groups``, a copy of the keys/values the
call reads) and the reason is recorded. torch's documentation of ``scaled_dot_product_attention`` (read in torch
2.13) says GQA "currently works only for Flash_attention and math kernel on CUDA tensor"; flash attention takes no
arbitrary mask and GLM's mask is one, so with such a torch prefill repeats the heads while decode (the Triton kernel)
never does. torch's ``sdp_utils.cpp`` gives ROCm's memory-efficient kernel no GQA (``supports_gqa = false`` under
``USE_ROCM``). Newer torch adds GQA to CUDA's memory-efficient kernel (pytorch/pytorch#191085), which the dispatcher
question picks up without a change here. The reference path repeats the heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from glm_engine.kernels.triton.configs import MAX_ATTENTION_HEAD_DIM
from glm_engine.ops.interface import expand_groups
from glm_engine.ops.torch_ops import reference_attention, sdpa_takes_enable_gqa

DECODE_KERNEL_DTYPES = (torch.float16, torch.bfloat16)


class AttentionPath(str, Enum):
    SDPA = "sdpa"
    TRITON_DECODE = "triton_decode"
    REFERENCE = "reference"


@dataclass(frozen=True)
class AttentionPolicy:
    """Which path a device uses for multi-row (prefill) and one-row (decode) attention, with the reasons."""

    prefill: AttentionPath
    prefill_reason: str
    decode: AttentionPath
    decode_reason: str

    def choose(self, sq: int, head_dim: int, dtype: torch.dtype) -> tuple[AttentionPath, str]:
        """The path for a call with ``sq`` query rows, heads of ``head_dim`` and activations in ``dtype``."""
        if sq != 1:
            return self.prefill, self.prefill_reason
        if self.decode is not AttentionPath.TRITON_DECODE:
            return self.decode, self.decode_reason
        if dtype not in DECODE_KERNEL_DTYPES:
            return self.prefill, f"one query row in {dtype}: the decode kernel takes fp16/bf16; {self.prefill_reason}"
        if head_dim > MAX_ATTENTION_HEAD_DIM:
            return self.prefill, f"head_dim {head_dim} > {MAX_ATTENTION_HEAD_DIM} (decode kernel's register tile)"
        return self.decode, self.decode_reason

    def describe(self) -> str:
        prefill = f"prefill: {self.prefill.value} ({self.prefill_reason})"
        return f"{prefill}; decode: {self.decode.value} ({self.decode_reason})"


SDPA_REASON = "torch SDPA with the bool mask (memory-efficient kernel, fp32 softmax inside)"
TRITON_DECODE_REASON = "Triton split-K decode kernel (one query row per head, fp32 online softmax)"


# SDPA kernels that keep fp32 scores inside; torch's math fallback is not among them (see sdpa_attention).
FUSED_SDPA_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION]


# torch's questions "would this fused SDPA kernel take these arguments", by kernel (torch.backends.cuda; the cuDNN one
# is missing from older torch and skipped there).
FUSED_SDPA_CHECKS = (
    ("flash", "can_use_flash_attention"),
    ("memory-efficient", "can_use_efficient_attention"),
    ("cuDNN", "can_use_cudnn_attention"),
)
REPEATED = "key/value heads repeated for their query heads (a copy)"


def fused_gqa_kernels(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """The fused SDPA kernels torch's dispatcher would run for this grouped call with ``enable_gqa=True``."""
    try:
        params = torch.backends.cuda.SDPAParams(q, k, v, mask, 0.0, False, True)
    except TypeError:  # a build whose SDPAParams predates enable_gqa (it came with the argument, in torch 2.5)
        return []
    checks = ((name, getattr(torch.backends.cuda, attr, None)) for name, attr in FUSED_SDPA_CHECKS)
    return [name for name, check in checks if check is not None and check(params)]


def grouped_sdpa_verdict(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> tuple[bool, str]:
    """Whether SDPA reads grouped ``k, v`` in place for this call (``enable_gqa=True``), with the reason either way.

    ``mask`` is SDPA's (True = may attend). On a device only a fused kernel may take the call (the math fallback
    would repeat the heads inside and form the score matrix), so the dispatcher is asked which fused kernel would."""
    if not sdpa_takes_enable_gqa():
        return False, f"{REPEATED}: torch {torch.__version__}'s SDPA has no enable_gqa (torch 2.5+)"
    if q.device.type == "cpu":
        return True, "grouped heads read in place (SDPA enable_gqa)"
    kernels = fused_gqa_kernels(q, k, v, mask)
    if kernels:
        return True, f"grouped heads read in place (SDPA enable_gqa, {kernels[0]} kernel)"
    return False, (
        f"{REPEATED}: no fused SDPA kernel of torch {torch.__version__} takes grouped heads with GLM's mask here "
        "(flash attention takes no mask)"
    )


def grouped_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocked: torch.Tensor, layer_scale: float = 1.0
) -> tuple[torch.Tensor, str]:
    """:func:`sdpa_attention` and how grouped key/value heads were read ("" when ``k, v`` have one head per query
    head)."""
    mask = ~blocked
    note, native = "", False
    if k.shape[1] != q.shape[1]:
        native, note = grouped_sdpa_verdict(q, k, v, mask)
        if not native:
            k, v = expand_groups(k, v, q.shape[1])
    return _sdpa(q, k, v, mask, blocked, layer_scale, native), note


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocked: torch.Tensor, layer_scale: float = 1.0
) -> torch.Tensor:
    """The contract's attention through torch SDPA (see the module docstring for why it is the same math); grouped
    ``k, v`` are read in place where a fused kernel takes them (:func:`grouped_sdpa_verdict`), else repeated."""
    return grouped_sdpa(q, k, v, blocked, layer_scale)[0]


def _sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    blocked: torch.Tensor,
    layer_scale: float,
    enable_gqa: bool,
) -> torch.Tensor:
    """One SDPA call with ``scale = 1/sqrt(d)``.

    In fp16/bf16 on a device only the fused kernels may take the call: torch's math fallback formed fp16 scores
    before torch 2.5, unscaled, which overflows in deep GLM-130B layers. Where no fused kernel accepts the shapes
    (SDPA raises), the reference's layer-scaled path runs instead."""
    kwargs: dict[str, Any] = {"scale": 1.0 / math.sqrt(q.shape[-1])}
    if enable_gqa:  # only when asked: torch before 2.5 has no such argument
        kwargs["enable_gqa"] = True
    if q.device.type == "cpu" or q.dtype not in (torch.float16, torch.bfloat16):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)
    try:
        with sdpa_kernel(FUSED_SDPA_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)
    except RuntimeError:  # "No available kernel": no fused kernel takes these shapes on this device
        return reference_attention(q, k, v, blocked, layer_scale)
