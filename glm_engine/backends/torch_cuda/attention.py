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
  two roundings. A blocked key contributes ``exp(-inf) = 0`` here and ``exp(-10000 * layer_scale - max) = 0`` in the
  reference's fp32 softmax; the two differ only for a row with every key blocked (NaN here, uniform there), which
  the contract rules out (every query row has an unblocked key; padded rows attend to themselves). Used for prefill
  (and fp32). On a device the kernel is chosen here, not by torch (:func:`run_sdpa`): see "Which SDPA kernel" below.
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

Which SDPA kernel (on a device): GLM's prefix-bidirectional mask is an arbitrary bool mask, and on CUDA only the
memory-efficient and cuDNN kernels take one; flash attention takes none (only ``is_causal``), so it never keeps the
semantics of a masked call and is not offered. torch's own priority order (``check_prefer_cudnn_attention`` in its
``sdp_utils.cpp``) puts cuDNN first on SM90/SM100 once the runtime cuDNN is newer than 9.15 (as described in
pytorch/pytorch#191612), and cuDNN's masked attention has known defects there: internal asserts on some shape and mask
combinations (``mha_graph.execute(...).is_good()``, pytorch/pytorch#134001), silently wrong generations with few
key/value heads on SM100 (pytorch/pytorch#193893), NaN gradients with a mask at ``s % 128 == 64`` on H100/H200
(pytorch/pytorch#196678: the backward pass, which inference never runs, but the same masked tiles). So the kernels
are named explicitly with ``torch.nn.attention.sdpa_kernel``: the memory-efficient kernel by default, cuDNN only when
asked for (``GLM_ENGINE_SDPA_CUDNN=1``, after ``glm-engine conformance --backend cuda`` passes with it set). torch's
dispatcher is asked before the call which allowed kernel takes it (``torch.backends.cuda.can_use_*_attention``, the
same checks torch runs); when none does, the call goes to the reference path and the record says so (fp32 calls use
torch's math kernel instead, which computes in fp32 like the reference). A kernel that still refuses the call raises
one of torch's two "no kernel for these arguments" errors: the dispatcher's ``RuntimeError("No available kernel.
Aborting execution.")`` (``select_sdp_backend`` in ``sdp_utils.cpp``, raised when the kernels ``sdpa_kernel`` allows
cannot serve the arguments) and the memory-efficient kernel's own ``"cutlassF: no kernel found to launch!"`` (its
build has no kernel for the device's architecture and dtype); those fall back the same way and are recorded. Every
other error surfaces: out of memory (``torch.OutOfMemoryError``, a ``RuntimeError``), a kernel's internal assert, a
CUDA error. The unfused path would build ``[b, h, s, s]`` scores, which is exactly the wrong answer to running out of
memory.
"""

from __future__ import annotations

import math
import os
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


ENV_CUDNN = "GLM_ENGINE_SDPA_CUDNN"  # "1" lets SDPA use cuDNN attention (off by default: see the module docstring)

# SDPA kernels that take an arbitrary bool mask on CUDA, by how the records name them, with torch's question "would
# this kernel take these arguments" (torch.backends.cuda; the cuDNN one is missing from older torch: never taken there).
MASKED_SDPA_KERNELS: dict[SDPBackend, tuple[str, str]] = {
    SDPBackend.EFFICIENT_ATTENTION: ("memory-efficient", "can_use_efficient_attention"),
    SDPBackend.CUDNN_ATTENTION: ("cuDNN", "can_use_cudnn_attention"),
}
DEFAULT_SDPA_KERNELS: tuple[SDPBackend, ...] = (SDPBackend.EFFICIENT_ATTENTION,)
# torch's words for "no kernel takes these arguments": the dispatcher's (sdpa_kernel allowing none that fits), and the
# memory-efficient kernel's own when its build has no kernel for the device's architecture.
NO_KERNEL_MESSAGES = ("No available kernel", "no kernel found to launch")


def cudnn_requested() -> bool:
    """Whether ``GLM_ENGINE_SDPA_CUDNN`` asks for cuDNN attention."""
    return os.environ.get(ENV_CUDNN, "").strip().lower() in ("1", "true", "yes", "on")


def sdpa_kernels(cudnn: bool | None = None) -> tuple[SDPBackend, ...]:
    """The SDPA kernels a masked call may use, in order of preference: cuDNN first only when asked for (``cudnn``,
    else ``GLM_ENGINE_SDPA_CUDNN``), then the memory-efficient kernel."""
    wanted = cudnn_requested() if cudnn is None else cudnn
    return (SDPBackend.CUDNN_ATTENTION, *DEFAULT_SDPA_KERNELS) if wanted else DEFAULT_SDPA_KERNELS


def kernel_names(kernels: tuple[SDPBackend, ...]) -> str:
    return ", ".join(MASKED_SDPA_KERNELS[k][0] for k in kernels)


def sdpa_reason(kernels: tuple[SDPBackend, ...] = DEFAULT_SDPA_KERNELS) -> str:
    """Why SDPA runs prefill, naming the kernels it may use."""
    cudnn = (
        f"cuDNN opted in by {ENV_CUDNN}=1"
        if SDPBackend.CUDNN_ATTENTION in kernels
        else f"cuDNN off unless {ENV_CUDNN}=1"
    )
    return f"torch SDPA with the bool mask on the {kernel_names(kernels)} kernel ({cudnn}; fp32 softmax inside)"


@dataclass(frozen=True)
class AttentionPolicy:
    """Which path a device uses for multi-row (prefill) and one-row (decode) attention, with the reasons, and which
    SDPA kernels the ``sdpa`` path may use (in order of preference)."""

    prefill: AttentionPath
    prefill_reason: str
    decode: AttentionPath
    decode_reason: str
    sdpa_kernels: tuple[SDPBackend, ...] = DEFAULT_SDPA_KERNELS

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


SDPA_REASON = sdpa_reason()
TRITON_DECODE_REASON = "Triton split-K decode kernel (one query row per head, fp32 online softmax)"


# torch's questions "would this fused SDPA kernel take these arguments", for every fused kernel (torch.backends.cuda;
# the cuDNN one is missing from older torch). Only those of MASKED_SDPA_KERNELS are asked; tests answer all of them.
FUSED_SDPA_CHECKS = (
    ("flash", "can_use_flash_attention"),
    ("memory-efficient", "can_use_efficient_attention"),
    ("cuDNN", "can_use_cudnn_attention"),
)
REPEATED = "key/value heads repeated for their query heads (a copy)"


def _sdpa_params(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, enable_gqa: bool) -> Any:
    """torch's ``SDPAParams`` for a call without dropout or ``is_causal``; None where this torch cannot describe it
    (``enable_gqa`` came with torch 2.5, as did the argument of ``SDPAParams``)."""
    try:
        return torch.backends.cuda.SDPAParams(q, k, v, mask, 0.0, False, enable_gqa)
    except TypeError:
        return None if enable_gqa else torch.backends.cuda.SDPAParams(q, k, v, mask, 0.0, False)


def kernels_taking(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    enable_gqa: bool = False,
    kernels: tuple[SDPBackend, ...] = DEFAULT_SDPA_KERNELS,
) -> list[SDPBackend]:
    """The kernels of ``kernels`` torch's dispatcher says would take this masked call, in the same order."""
    params = _sdpa_params(q, k, v, mask, enable_gqa)
    if params is None:
        return []
    checks = ((kernel, getattr(torch.backends.cuda, MASKED_SDPA_KERNELS[kernel][1], None)) for kernel in kernels)
    return [kernel for kernel, check in checks if check is not None and check(params)]


def fused_gqa_kernels(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    kernels: tuple[SDPBackend, ...] = DEFAULT_SDPA_KERNELS,
) -> list[str]:
    """The allowed fused SDPA kernels torch's dispatcher would run for this grouped call with ``enable_gqa=True``."""
    return [MASKED_SDPA_KERNELS[kernel][0] for kernel in kernels_taking(q, k, v, mask, True, kernels)]


def grouped_sdpa_verdict(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    kernels: tuple[SDPBackend, ...] = DEFAULT_SDPA_KERNELS,
) -> tuple[bool, str]:
    """Whether SDPA reads grouped ``k, v`` in place for this call (``enable_gqa=True``), with the reason either way.

    ``mask`` is SDPA's (True = may attend). On a device only an allowed fused kernel may take the call (the math
    fallback would repeat the heads inside and form the score matrix), so the dispatcher is asked which would."""
    if not sdpa_takes_enable_gqa():
        return False, f"{REPEATED}: torch {torch.__version__}'s SDPA has no enable_gqa (torch 2.5+)"
    if q.device.type == "cpu":
        return True, "grouped heads read in place (SDPA enable_gqa)"
    taking = fused_gqa_kernels(q, k, v, mask, kernels)
    if taking:
        return True, f"grouped heads read in place (SDPA enable_gqa, {taking[0]} kernel)"
    return False, (
        f"{REPEATED}: no fused SDPA kernel of torch {torch.__version__} allowed here ({kernel_names(kernels)}) takes "
        "grouped heads with GLM's mask (flash attention takes no mask)"
    )


@dataclass(frozen=True)
class SdpaRun:
    """One call of the ``sdpa`` path: its output, the path that actually ran (``SDPA``, or ``REFERENCE`` when no
    allowed kernel took an fp16/bf16 call), which kernel ran, why no allowed fused kernel did ("" when one did), and
    how grouped heads were read ("" when not grouped)."""

    out: torch.Tensor
    path: AttentionPath
    detail: str
    grouped_note: str = ""
    fallback: str = ""


def run_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocked: torch.Tensor,
    layer_scale: float = 1.0,
    kernels: tuple[SDPBackend, ...] = DEFAULT_SDPA_KERNELS,
) -> SdpaRun:
    """The contract's attention through torch SDPA on one of ``kernels`` (the module docstring says why it is the
    same math and how the kernel is chosen); grouped ``k, v`` are read in place where an allowed kernel takes them
    (:func:`grouped_sdpa_verdict`), else repeated."""
    mask = ~blocked
    note, native = "", False
    if k.shape[1] != q.shape[1]:
        native, note = grouped_sdpa_verdict(q, k, v, mask, kernels)
        if not native:
            k, v = expand_groups(k, v, q.shape[1])
    kwargs: dict[str, Any] = {"scale": 1.0 / math.sqrt(q.shape[-1])}
    if native:  # only when asked: torch before 2.5 has no such argument
        kwargs["enable_gqa"] = True
    if q.device.type == "cpu":  # torch's CPU kernels: none of the CUDA kernels' defects, nothing to choose
        return SdpaRun(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs), AttentionPath.SDPA, "", note)
    taking = kernels_taking(q, k, v, mask, native, kernels)
    if taking:
        name = MASKED_SDPA_KERNELS[taking[0]][0]
        try:
            with sdpa_kernel([taking[0]]):  # exactly the kernel recorded, never one torch would add on its own
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)
            return SdpaRun(out, AttentionPath.SDPA, f"{name} kernel", note)
        except RuntimeError as exc:
            if not no_kernel_error(exc):
                raise  # a real failure (out of memory, a kernel's assert, a CUDA error): never hidden by a fallback
            why = f"the {name} kernel refused the call: {str(exc).splitlines()[0]}"
    else:
        why = f"no allowed SDPA kernel ({kernel_names(kernels)}) takes this call (torch's dispatcher)"
    if q.dtype not in (torch.float16, torch.bfloat16):  # torch's math kernel computes in fp32 like the reference
        with sdpa_kernel([SDPBackend.MATH]):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)
        return SdpaRun(out, AttentionPath.SDPA, "math kernel (fp32 scores)", note, why)
    return SdpaRun(reference_attention(q, k, v, blocked, layer_scale), AttentionPath.REFERENCE, why, note, why)


def no_kernel_error(exc: RuntimeError) -> bool:
    """Whether ``exc`` is torch's "no kernel for these arguments" (module docstring), not a failure of a kernel that
    ran: out of memory is a ``RuntimeError`` too and never counts, whatever its message says."""
    return not isinstance(exc, torch.OutOfMemoryError) and any(m in str(exc) for m in NO_KERNEL_MESSAGES)


def grouped_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocked: torch.Tensor,
    layer_scale: float = 1.0,
    kernels: tuple[SDPBackend, ...] = DEFAULT_SDPA_KERNELS,
) -> tuple[torch.Tensor, str]:
    """:func:`run_sdpa`'s output and how grouped key/value heads were read ("" when ``k, v`` have one head per query
    head)."""
    run = run_sdpa(q, k, v, blocked, layer_scale, kernels)
    return run.out, run.grouped_note


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocked: torch.Tensor, layer_scale: float = 1.0
) -> torch.Tensor:
    """The contract's attention through torch SDPA on the default kernels (:func:`run_sdpa`)."""
    return run_sdpa(q, k, v, blocked, layer_scale).out
