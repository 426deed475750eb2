"""GLM attention on torch_npu's fused attention kernels, chosen per SoC family, with the reason when none applies.

The op contract (``OpTable.attention``) is the reference's layer-scaled fp32 softmax::

    softmax(fp32(fp16(q / (sqrt(d) * L)) @ k^T, blocked -> -10000) * L) @ v

Every kernel below computes ``softmax(scale * q @ k^T, masked keys excluded) @ v`` with ``scale = 1/sqrt(d)``. The
two agree up to rounding: ``(q / (sqrt(d) L)) k^T * L = q k^T / sqrt(d)`` exactly in real arithmetic, so ``L`` only
moves where the fp16 roundings fall (it exists to keep fp16 *scores* finite in deep layers; the fused kernels do not
materialise fp16 scores: the scores come out of the cube unit's fp32 accumulator and the online softmax runs on the
vector unit; torch_npu documents the fp32 intermediates only through ``inner_precise`` "high precision", which we
request where the op has it). A blocked score is ``-10000 * L <= -10000`` in fp32, whose ``exp`` relative to any
unblocked score above ``-9900`` underflows to exactly 0, so filling and excluding agree whenever a row has an
unblocked key (the contract guarantees one). What is left is rounding: the fused path rounds less often than the
reference (no fp16 ``q / (sqrt(d) L)``, no fp16 score matrix); on a device the conformance suite's attention NMSE
threshold is what decides, and only a device can run it.

Kernels per family (torch_npu API reference; the product lists are the pages' "支持的型号"):

============================  ==========================================  ==========================================
family                        prefill (query length > 1)                  decode (query length 1)
============================  ==========================================  ==========================================
Atlas A2 (910B)               npu_fusion_attention, else                  npu_incre_flash_attention, else
                              npu_prompt_flash_attention                  npu_fused_infer_attention_score
Atlas A3 (910_93)             npu_fused_infer_attention_score, else       npu_fused_infer_attention_score
                              npu_prompt_flash_attention
Atlas inference (310P)        npu_prompt_flash_attention (fp16 only)      npu_incre_flash_attention (fp16 only)
first-gen 910 / unknown       portable path                               portable path
============================  ==========================================  ==========================================

"else" = the next one when the installed torch_npu lacks the first (checked with ``hasattr``).

- ``torch_npu.npu_fusion_attention(query, key, value, head_num, input_layout, pse=None, padding_mask=None,
  atten_mask=None, scale=1., keep_prob=1., pre_tockens=2147483647, next_tockens=2147483647, inner_precise=0,
  prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0, ...) -> (Tensor, ...)``: products
  "Atlas A2 训练系列产品" only; its page says it is meant for training, and it is the flash-attention forward that
  also serves inference prefill on A2. ``atten_mask`` bool/uint8, **1 = not computed**, shapes BNSS/B1SS/11SS/SS;
  ``sparse_mode=0`` with the default pre/next tokens is "defaultMask": the full mask as given.
  https://www.hiascend.com/document/detail/zh/Pytorch/600/apiref/apilist/ptaoplist_000850.html and
  https://gitcode.com/Ascend/op-plugin/blob/master/docs/context/torch_npu-npu_fusion_attention.md
- ``torch_npu.npu_prompt_flash_attention(query, key, value, *, atten_mask=None, actual_seq_lengths=None,
  num_heads=1, scale_value=1.0, pre_tokens=2147473647, next_tokens=0, input_layout="BSH", num_key_value_heads=0,
  actual_seq_lengths_kv=None, sparse_mode=0, ...) -> Tensor``: Atlas A2, A3 and the Atlas inference series (fp16
  only there; sparse_mode 0 only; next_tokens 0 or 2147483647). **next_tokens defaults to 0 (causal)**, so it is
  passed as 2147483647 for our explicit prefix-bidirectional mask. Inputs must be contiguous; D 16-aligned, <= 512.
  https://gitcode.com/Ascend/op-plugin/blob/master/docs/context/torch_npu-npu_prompt_flash_attention.md
- ``torch_npu.npu_incre_flash_attention(query, key, value, *, atten_mask=None, actual_seq_lengths=None,
  num_heads=1, scale_value=1.0, input_layout="BSH", num_key_value_heads=0, block_size=0, inner_precise=1, ...)``:
  Atlas A2 (fp16/bf16) and the Atlas inference series (fp16). ``atten_mask`` 1 = not computed, bool/int8/uint8;
  its page gives no shape list, its example masks ``(B, 1, 1, S_kv)``, which we pass. ``inner_precise=0`` = high
  precision. https://gitcode.com/Ascend/op-plugin/blob/master/docs/context/torch_npu-npu_incre_flash_attention.md
- ``torch_npu.npu_fused_infer_attention_score(query, key, value, *, atten_mask=None, actual_seq_lengths=None,
  actual_seq_lengths_kv=None, num_heads=1, scale=1.0, pre_tokens=2147483647, next_tokens=2147483647,
  input_layout="BSH", num_key_value_heads=0, sparse_mode=0, inner_precise=0, ...) -> (Tensor, Tensor)``: Atlas A2
  and A3. Contiguous inputs; mask shapes (B, 1, Q_S, KV_S) / (1, 1, Q_S, KV_S) for Q_S > 1 and (B, 1, 1, KV_S) for
  Q_S = 1.
  https://gitcode.com/Ascend/op-plugin/blob/master/docs/context/torch_npu-npu_fused_infer_attention_score.md

Grouped-query attention (``k, v [b, g, s, d]``, ``g`` dividing ``h``): the inference kernels take the key/value head
count as ``num_key_value_heads`` ("代表key、value中head个数，用于支持GQA场景"; default 0 = as many as query heads;
``num_heads`` must be a multiple of it, at most 64 times it, and in BNSD it must equal key/value's N axis), and
``npu_fusion_attention`` reads it from key/value's N axis ("支持输入query的N和key/value的N不相等，但必须成比例关系",
Nq/Nkv a non-zero integer, Nq <= 256). So grouped heads are read in place, except where a page rules it out: on the
Atlas inference series ``npu_prompt_flash_attention`` takes ``num_key_value_heads`` 0 only ("仅支持默认值0"), and
no inference kernel takes more than 64 query heads per key/value head; there the heads are repeated for the kernel
(``expand_groups``, a copy of what the call reads) and the reason is recorded (:func:`grouped_kv_reason`). The pages
name the count, not which query heads share a key/value head; glm-engine's grouping (query head ``i`` reads key/value
head ``i // (h / g)``) is the GQA paper's and torch's ``enable_gqa``'s, assumed to be the kernels' too: only a device
run (``glm-engine conformance --backend ascend``, the ``grouped_attention`` rows) can confirm it.

Decode reads the KV cache in place: the cache hands attention a view ``[b, h, :length, d]`` of a contiguous
``[b, h, max_length, d]`` buffer; the decode kernels take the whole buffer plus ``actual_seq_lengths(_kv)`` (the
valid prefix), so no copy of the cache is made per step (:func:`kv_in_place`).

The kernels' ``atten_mask`` is made once per forward call and shared by every layer (:class:`SharedMask`): every layer
of a step gets the same ``blocked`` tensor, so rebuilding it per layer (a contiguous copy, and for decode a mask
widened to the cache buffer) repeated the same work L times a step. The widened decode mask is filled, then the valid
prefix copied in, rather than padded: whether torch_npu has a device kernel for a *bool* ``constant_pad_nd`` is not
documented (it may fall back to the host), while a fill and a strided copy are plain device kernels for any dtype.
Not measured on an NPU.
"""

from __future__ import annotations

import math
import weakref
from enum import Enum
from types import ModuleType

import torch

from glm_engine.backends.ascend.soc import SocFamily, has_bf16

ALL_TOKENS = 2147483647  # pre/next tokens meaning "no band limit" (the documented default of npu_fusion_attention)
MAX_HEADS = 256  # N <= 256 in all four kernels' constraints
MAX_HEAD_DIM = 512  # D <= 512 in the inference kernels (npu_fusion_attention allows 768)
HEAD_DIM_ALIGN = 16  # fp16/bf16 D must be 16-aligned in the prompt / fused-infer kernels
HIGH_PRECISION = 0  # inner_precise: 0 = high precision, no invalid-row correction (every row has a key)
MAX_GROUP_RATIO = 64  # num_heads / num_key_value_heads <= 64 (prompt, incremental and fused-infer pages)
SAME_HEADS = 0  # num_key_value_heads 0: key/value have as many heads as query (the documented default)
# Atlas inference series (310P) axis limits: prompt B <= 128, S <= 65535; incremental B <= 256, S <= 65536.
INFERENCE_PROMPT_MAX_BATCH, INFERENCE_PROMPT_MAX_SEQ = 128, 65535
INFERENCE_INCRE_MAX_BATCH, INFERENCE_INCRE_MAX_SEQ = 256, 65536


class AttentionKernel(str, Enum):
    FUSION = "npu_fusion_attention"
    PROMPT = "npu_prompt_flash_attention"
    INCRE = "npu_incre_flash_attention"
    FUSED_INFER = "npu_fused_infer_attention_score"


PREFILL_KERNELS: dict[SocFamily, tuple[AttentionKernel, ...]] = {
    SocFamily.ATLAS_A2: (AttentionKernel.FUSION, AttentionKernel.PROMPT),
    SocFamily.ATLAS_A3: (AttentionKernel.FUSED_INFER, AttentionKernel.PROMPT),
    SocFamily.ATLAS_INFERENCE: (AttentionKernel.PROMPT,),
}
DECODE_KERNELS: dict[SocFamily, tuple[AttentionKernel, ...]] = {
    SocFamily.ATLAS_A2: (AttentionKernel.INCRE, AttentionKernel.FUSED_INFER),
    SocFamily.ATLAS_A3: (AttentionKernel.FUSED_INFER,),
    SocFamily.ATLAS_INFERENCE: (AttentionKernel.INCRE,),
}


def choose_kernel(
    npu: ModuleType | object | None, family: SocFamily, dtype: torch.dtype, decode: bool
) -> tuple[AttentionKernel | None, str]:
    """The fused kernel for this SoC, dtype and phase, or None and why the portable path runs instead.

    ``npu`` is the torch_npu module (None: answer from the documentation alone, as ``supports()`` does before a
    device is touched)."""
    phase = "decode" if decode else "prefill"
    if dtype not in (torch.float16, torch.bfloat16):
        return None, f"the fused attention kernels take fp16/bf16, not {dtype}; {phase} runs the portable fp32 path"
    if dtype == torch.bfloat16 and not has_bf16(family):
        return None, f"bf16 attention is documented for Atlas A2/A3 only, not {family.value}"
    candidates = (DECODE_KERNELS if decode else PREFILL_KERNELS).get(family, ())
    if not candidates:
        return None, f"torch_npu documents no fused {phase} attention for {family.value}"
    if npu is None:
        return candidates[0], ""
    for kernel in candidates:
        if hasattr(npu, kernel.value):
            return kernel, ""
    names = ", ".join(k.value for k in candidates)
    return None, f"this torch_npu has none of {names} (upgrade torch_npu and CANN together)"


def shape_reason(kernel: AttentionKernel, family: SocFamily, q: torch.Tensor, k: torch.Tensor) -> str:
    """Why ``kernel`` cannot take these shapes (its documented axis limits), or ""."""
    b, heads, _, d = q.shape
    sk = k.shape[2]
    if heads > MAX_HEADS:
        return f"{kernel.value} takes at most {MAX_HEADS} heads, got {heads}"
    if kernel is not AttentionKernel.FUSION and (d > MAX_HEAD_DIM or d % HEAD_DIM_ALIGN):
        return f"{kernel.value} needs a head dim <= {MAX_HEAD_DIM} and a multiple of {HEAD_DIM_ALIGN}, got {d}"
    if family is SocFamily.ATLAS_INFERENCE:
        if kernel is AttentionKernel.PROMPT and (b > INFERENCE_PROMPT_MAX_BATCH or sk > INFERENCE_PROMPT_MAX_SEQ):
            return f"{kernel.value} on {family.value}: batch <= {INFERENCE_PROMPT_MAX_BATCH}, keys <= 65535"
        if kernel is AttentionKernel.INCRE and (b > INFERENCE_INCRE_MAX_BATCH or sk > INFERENCE_INCRE_MAX_SEQ):
            return f"{kernel.value} on {family.value}: batch <= {INFERENCE_INCRE_MAX_BATCH}, keys <= 65536"
    return ""


def grouped_kv_reason(kernel: AttentionKernel, family: SocFamily, heads: int, groups: int) -> str:
    """Why ``kernel`` cannot read ``groups`` key/value heads for ``heads`` query heads in place on ``family`` (the
    heads are then repeated for it), or "" (also when there is nothing grouped)."""
    if groups == heads:
        return ""
    if kernel is AttentionKernel.PROMPT and family is SocFamily.ATLAS_INFERENCE:
        return f"{kernel.value} on {family.value} takes num_key_value_heads 0 only (no grouped heads)"
    if kernel is not AttentionKernel.FUSION and heads // groups > MAX_GROUP_RATIO:
        return f"{kernel.value} takes at most {MAX_GROUP_RATIO} query heads per key/value head, got {heads // groups}"
    return ""


def kv_heads_argument(heads: int, groups: int) -> int:
    """``num_key_value_heads`` for ``groups`` key/value heads: the documented default 0 when there is one per query
    head (the value every call passed before grouped heads existed), else the count."""
    return SAME_HEADS if groups == heads else groups


def kernel_mask(
    blocked: torch.Tensor, batch: int, sq: int, sk: int, full_batch: bool, buffer_keys: int | None = None
) -> torch.Tensor:
    """``blocked`` (True = may not attend, broadcastable to ``[b, 1, sq, sk]``) as the kernels' ``atten_mask``:
    a contiguous bool ``[b or 1, 1, sq, sk]`` where True (1) = not computed, the same convention.
    ``full_batch`` expands a batch-shared mask to ``b`` rows (the Q_S = 1 shapes all name B). ``buffer_keys`` widens
    the key axis to the whole KV buffer handed to a decode kernel, the keys past ``sk`` blocked (never computed)."""
    rows = batch if full_batch or blocked.shape[0] != 1 else 1
    wanted = blocked.to(torch.bool).expand(rows, 1, sq, sk)
    if buffer_keys is None or buffer_keys == sk:
        return wanted.contiguous()
    mask = torch.ones(rows, 1, sq, buffer_keys, dtype=torch.bool, device=blocked.device)  # fill + copy: no bool pad
    mask[..., :sk] = wanted
    return mask


class SharedMask:
    """The kernels' ``atten_mask`` of the current forward call, built on the first layer and handed to the others.

    The key is the ``blocked`` tensor itself (held by a weak reference, so an ended step's mask is not kept alive and
    a freed tensor's id cannot be mistaken for a new one) and the mask's arguments. Every layer of one call receives
    the same ``blocked`` object; the next step passes another one (the generator slices a new row of its mask), so
    the cache misses exactly once per call. A caller that rewrote one mask tensor in place between calls of the same
    shape would get the old mask; none does (masks are built per call), and ``_version`` catches it where torch tracks
    versions (outside inference mode). ``builds`` counts the masks made, for tests and diagnostics."""

    def __init__(self) -> None:
        self._blocked: weakref.ref[torch.Tensor] | None = None
        self._key: tuple = ()
        self._mask: torch.Tensor | None = None
        self.builds = 0

    def get(
        self, blocked: torch.Tensor, batch: int, sq: int, sk: int, full_batch: bool, buffer_keys: int | None = None
    ) -> torch.Tensor:
        key = (batch, sq, sk, full_batch, buffer_keys, _version(blocked))
        if self._mask is not None and self._blocked is not None and self._blocked() is blocked and self._key == key:
            return self._mask
        self._mask = kernel_mask(blocked, batch, sq, sk, full_batch, buffer_keys)
        self._blocked, self._key = weakref.ref(blocked), key
        self.builds += 1
        return self._mask


def _version(t: torch.Tensor) -> int | None:
    """torch's in-place write counter of ``t``, or None for inference tensors (which do not track it)."""
    try:
        return t._version
    except RuntimeError:
        return None


def kv_in_place(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """``k, v [b, h, s, d]`` as contiguous tensors without a copy when they are the valid prefix of a contiguous
    ``[b, h, S, d]`` buffer (the KV cache's views): the whole buffer and ``s`` (pass as the kernel's actual KV
    length). Otherwise contiguous copies and None."""
    if k.is_contiguous() and v.is_contiguous():
        return k, v, None
    widened = [_whole_buffer(t) for t in (k, v)]
    if widened[0] is not None and widened[1] is not None:
        return widened[0], widened[1], k.shape[2]
    return k.contiguous(), v.contiguous(), None


def _whole_buffer(t: torch.Tensor) -> torch.Tensor | None:
    b, h, s, d = t.shape
    sb, sh, ss, sd = t.stride()
    if sd != 1 or ss != d or sh % d or sb != h * sh:
        return None
    rows = sh // d
    if rows < s:
        return None
    needed = t.storage_offset() + (b - 1) * sb + (h - 1) * sh + rows * d
    if needed > t.untyped_storage().nbytes() // t.element_size():
        return None
    return t.as_strided((b, h, rows, d), (sb, sh, d, 1))


def fused_attention(
    npu: ModuleType | object,
    kernel: AttentionKernel,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocked: torch.Tensor,
    masks: SharedMask | None = None,
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d), blocked excluded) v`` for ``q [b, h, sq, d]``, ``k, v [b, g, sk, d]`` in BNSD
    (``g`` key/value heads: :func:`grouped_kv_reason` must have allowed them for ``kernel``). ``masks`` shares the
    kernel mask between the layers of one call (a fresh :class:`SharedMask` when None)."""
    b, heads, sq, d = q.shape
    kv_heads = kv_heads_argument(heads, k.shape[1])
    scale = 1.0 / math.sqrt(d)
    masks = masks or SharedMask()
    q = q.contiguous()
    if sq == 1:
        return _decode(npu, kernel, q, k, v, blocked, scale, masks)
    k, v = k.contiguous(), v.contiguous()
    mask = masks.get(blocked, b, sq, k.shape[2], full_batch=False)
    if kernel is AttentionKernel.FUSION:
        out = npu.npu_fusion_attention(
            q, k, v, heads, "BNSD", atten_mask=mask, scale=scale, keep_prob=1.0, sparse_mode=0
        )
        return out[0]
    if kernel is AttentionKernel.PROMPT:
        return npu.npu_prompt_flash_attention(
            q,
            k,
            v,
            atten_mask=mask,
            num_heads=heads,
            scale_value=scale,
            pre_tokens=ALL_TOKENS,
            next_tokens=ALL_TOKENS,
            input_layout="BNSD",
            num_key_value_heads=kv_heads,
            sparse_mode=0,
        )
    if kernel is AttentionKernel.FUSED_INFER:
        out, _ = npu.npu_fused_infer_attention_score(
            q,
            k,
            v,
            atten_mask=mask,
            num_heads=heads,
            scale=scale,
            pre_tokens=ALL_TOKENS,
            next_tokens=ALL_TOKENS,
            input_layout="BNSD",
            num_key_value_heads=kv_heads,
            sparse_mode=0,
            inner_precise=HIGH_PRECISION,
        )
        return out
    raise ValueError(f"{kernel.value} is a decode kernel; prefill needs a query longer than 1")


def _decode(
    npu: ModuleType | object,
    kernel: AttentionKernel,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocked: torch.Tensor,
    scale: float,
    masks: SharedMask,
) -> torch.Tensor:
    b, heads = q.shape[:2]
    valid = k.shape[2]
    kv_heads = kv_heads_argument(heads, k.shape[1])
    k, v, kv_length = kv_in_place(k, v)
    # the rows past the valid prefix of the buffer are never computed: the mask covers them, blocked
    mask = masks.get(blocked, b, 1, valid, full_batch=True, buffer_keys=k.shape[2])
    lengths = None if kv_length is None else [kv_length] * b
    if kernel is AttentionKernel.INCRE:
        return npu.npu_incre_flash_attention(
            q,
            k,
            v,
            atten_mask=mask,
            actual_seq_lengths=lengths,
            num_heads=heads,
            scale_value=scale,
            input_layout="BNSD",
            num_key_value_heads=kv_heads,
            inner_precise=HIGH_PRECISION,
        )
    if kernel is AttentionKernel.FUSED_INFER:
        out, _ = npu.npu_fused_infer_attention_score(
            q,
            k,
            v,
            atten_mask=mask,
            actual_seq_lengths_kv=lengths,
            num_heads=heads,
            scale=scale,
            input_layout="BNSD",
            num_key_value_heads=kv_heads,
            sparse_mode=0,
            inner_precise=HIGH_PRECISION,
        )
        return out
    raise ValueError(f"{kernel.value} is a prefill kernel; choose_kernel(decode=True) picks the decode one")
