"""``TorchNpuDouble``: a CPU test double of exactly the torch_npu functions glm-engine calls.

It implements what torch_npu's API reference documents for each function (argument names and defaults, layouts,
mask convention 1 = not computed, accepted mask shapes, band limits from pre/next tokens, actual KV lengths,
``num_key_value_heads`` and its limits, the rotate-half formula, the RMSNorm and SwiGLU formulas, the weight-quant
formula and INT4 bit layout) and asserts the documented input constraints, so
the Ascend backend's *calling code* (argument shaping, layouts, mask conversion, kernel choice) is tested without an
NPU. Numerics are computed in fp32 and rounded once to the output dtype, which is an assumption about the kernels'
internal precision, not a documented fact; so is the grouping of query heads over key/value heads (query head ``i``
reads key/value head ``i // (N / N_kv)``, the GQA paper's and torch's), since the pages give only the counts.

It is NOT device conformance: passing tests against this double says nothing about what a real NPU computes. Only
the tests that skip without an NPU (and ``glm-engine conformance --backend ascend``) can say that.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import torch

ALL_TOKENS = 2147483647
GIB = 2**30
MAX_GROUP_RATIO = 64  # num_heads / num_key_value_heads <= 64 (prompt, incremental and fused-infer pages)
MAX_KN = 65535  # npu_weight_quant_batchmatmul: K and N in [1, 65535]
_A2_A3 = re.compile(r"^Ascend910(B\d|_93)")  # Atlas A2 / A3 SoC names (the bare Ascend910B is first generation)


class _NpuDeviceModule:
    """``torch_npu.npu`` (== ``torch.npu``): the device queries the backend makes."""

    def __init__(
        self, name: str, soc_code: int | None, cann: str, count: int, memory: int, jit_compile: bool | None
    ) -> None:
        self._name, self._soc_code, self._count, self._memory = name, soc_code, count, memory
        self.utils = SimpleNamespace(get_cann_version=lambda module="CANN": cann)
        self.current = 0
        self.touched: list[int] = []  # device indices the device queries reached
        # set_compile_mode's documented defaults: jit_compile=False on Atlas A2/A3, True on the training and
        # inference series (torch_npu API reference, torch_npu.npu.set_compile_mode)
        self.jit_compile = not _A2_A3.match(name) if jit_compile is None else jit_compile

    def set_compile_mode(self, jit_compile: bool = True) -> None:
        self.jit_compile = jit_compile

    def is_jit_compile_false(self) -> bool:
        return not self.jit_compile

    def is_available(self) -> bool:
        return self._count > 0

    def device_count(self) -> int:
        return self._count

    # The queries below need the device's runtime (a memory query makes a context on it); ``touched`` records which
    # device each one reached, so tests can check that a process touches no NPU but its own.
    def get_device_name(self, index: int = 0) -> str:
        self.touched.append(index)
        return self._name

    def get_device_properties(self, index: int = 0) -> SimpleNamespace:
        self.touched.append(index)
        return SimpleNamespace(name=self._name, total_memory=self._memory)

    def mem_get_info(self, index: int = 0) -> tuple[int, int]:
        self.touched.append(index)
        return self._memory // 2, self._memory

    def get_soc_version(self) -> int:
        self.touched.append(self.current)
        if self._soc_code is None:
            raise RuntimeError("no SoC code")
        return self._soc_code

    def set_device(self, index: int) -> None:
        self.current = index


def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    pre_tokens: int = ALL_TOKENS,
    next_tokens: int = ALL_TOKENS,
    kv_lengths: list[int] | None = None,
) -> torch.Tensor:
    """The documented formula: softmax(scale * q k^T, masked positions not computed) v, BNSD, in fp32."""
    b, heads, sq, _ = q.shape
    sk = k.shape[2]
    k, v = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))  # query head i reads i // (N / N_kv)
    scores = scale * (q.float() @ k.float().transpose(-1, -2))
    rows = torch.arange(sq).view(sq, 1)
    cols = torch.arange(sk).view(1, sk)
    excluded = (cols - rows > next_tokens) | (rows - cols > pre_tokens)  # sparse_mode 0: compute the band only
    excluded = excluded.view(1, 1, sq, sk).expand(b, 1, sq, sk)
    if mask is not None:
        excluded = excluded | _as_b1ss(mask.to(torch.bool), b, sq, sk)
    if kv_lengths is not None:
        lengths = torch.tensor(kv_lengths[:b] if len(kv_lengths) >= b else kv_lengths * b).view(b, 1, 1, 1)
        excluded = excluded | (cols.view(1, 1, 1, sk) >= lengths)
    assert not excluded.all(-1).any(), "a query row with every key masked (the kernels need invalid-row handling)"
    probs = torch.softmax(scores.masked_fill(excluded, float("-inf")), dim=-1)
    return (probs @ v.float()).to(q.dtype)


def _as_b1ss(mask: torch.Tensor, b: int, sq: int, sk: int) -> torch.Tensor:
    """A documented mask shape as ``[b or 1, 1, sq, sk]``: BNSS/B1SS/11SS as given, (B|1, S, S) or (B, 1, KV_S) with
    a head axis added, SS, or (B, KV_S) for one query row."""
    if mask.dim() == 4:
        return mask
    if mask.dim() == 3:
        return mask.unsqueeze(1)
    return mask.view(b, 1, 1, sk) if sq == 1 and mask.shape[0] == b else mask.view(1, 1, sq, sk)


def _check_qkv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    layout: str,
    contiguous: bool,
    kv_heads: int | None = None,
) -> None:
    """The layouts and head counts the pages allow; ``kv_heads`` is ``num_key_value_heads`` where the function takes
    it (0 = as many as query heads), None for ``npu_fusion_attention``, which reads it from key/value's N axis."""
    assert layout == "BNSD", "glm-engine passes BNSD (the only layout this double implements)"
    assert q.dim() == k.dim() == v.dim() == 4 and k.shape == v.shape
    assert q.dtype == k.dtype == v.dtype and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    assert heads == q.shape[1], "num_heads must equal the N of query"
    groups = k.shape[1]
    if kv_heads is not None:
        assert groups == (kv_heads or heads), "in BNSD num_key_value_heads must equal key/value's N (0: query's N)"
        assert heads // groups <= MAX_GROUP_RATIO, "num_heads / num_key_value_heads must not exceed 64"
    assert groups > 0 and heads % groups == 0, "query's N must be a multiple of key/value's N"
    assert q.shape[0] == k.shape[0] and q.shape[3] == k.shape[3]
    if contiguous:
        assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous(), "non-contiguous tensors not supported"


def _check_mask(mask: torch.Tensor | None, allowed: list[tuple[int, ...]]) -> None:
    if mask is None:
        return
    assert mask.dtype in (torch.bool, torch.uint8, torch.int8), f"atten_mask dtype {mask.dtype}"
    assert tuple(mask.shape) in allowed, f"atten_mask shape {tuple(mask.shape)} is not one of {allowed}"


class TorchNpuDouble:
    """The documented behaviour of the torch_npu functions glm-engine calls, on CPU tensors (see the module doc)."""

    def __init__(
        self,
        device_name: str = "Ascend910B2",
        soc_code: int | None = 221,
        cann: str = "8.0.RC3",
        count: int = 1,
        memory: int = 64 * GIB,
        omit: tuple[str, ...] = (),
        jit_compile: bool | None = None,
    ) -> None:
        self.npu = _NpuDeviceModule(device_name, soc_code, cann, count, memory, jit_compile)
        if "is_jit_compile_false" in omit:  # an older torch_npu without the query
            self.npu.is_jit_compile_false = None
        self.inference_series = device_name.startswith("Ascend310P")  # pages list per-product limits for it
        self.binary_family = bool(_A2_A3.match(device_name))  # npu_rotary_mul's jit_compile=False products
        self.atlas_a3 = device_name.startswith("Ascend910_93")
        self.omit = set(omit)
        self.calls: list[tuple[str, dict[str, Any]]] = []  # (function, its tensor/int arguments), for assertions

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("npu_") and name in object.__getattribute__(self, "omit"):
            raise AttributeError(f"this torch_npu has no {name}")
        return object.__getattribute__(self, name)

    # --- attention ---------------------------------------------------------------------------------------------
    def npu_fusion_attention(
        self,
        query,
        key,
        value,
        head_num,
        input_layout,
        pse=None,
        padding_mask=None,
        atten_mask=None,
        scale=1.0,
        keep_prob=1.0,
        pre_tockens=ALL_TOKENS,
        next_tockens=ALL_TOKENS,
        inner_precise=0,
        prefix=None,
        actual_seq_qlen=None,
        actual_seq_kvlen=None,
        sparse_mode=0,
        gen_mask_parallel=True,
        sync=False,
    ):
        _check_qkv(query, key, value, head_num, input_layout, contiguous=False)
        assert head_num <= 256, "Nq takes 1..256"
        b, n, sq, _ = query.shape
        sk = key.shape[2]
        _check_mask(atten_mask, [(b, n, sq, sk), (b, 1, sq, sk), (1, 1, sq, sk), (sq, sk)])
        assert pse is None and padding_mask is None and keep_prob == 1.0 and sparse_mode == 0
        self.calls.append(("npu_fusion_attention", {"key": key, "atten_mask": atten_mask, "scale": scale}))
        out = _attention(query, key, value, atten_mask, scale, pre_tockens, next_tockens)
        stats = torch.zeros(b, n, sq, 8)
        return out, stats, stats, torch.empty(0), 0, 0, 0

    def npu_prompt_flash_attention(
        self,
        query,
        key,
        value,
        *,
        pse_shift=None,
        padding_mask=None,
        atten_mask=None,
        actual_seq_lengths=None,
        deq_scale1=None,
        quant_scale1=None,
        deq_scale2=None,
        quant_scale2=None,
        quant_offset2=None,
        num_heads=1,
        scale_value=1.0,
        pre_tokens=2147473647,
        next_tokens=0,
        input_layout="BSH",
        num_key_value_heads=0,
        actual_seq_lengths_kv=None,
        sparse_mode=0,
    ):
        _check_qkv(query, key, value, num_heads, input_layout, contiguous=True, kv_heads=num_key_value_heads)
        assert not (self.inference_series and num_key_value_heads), "Atlas inference series: num_key_value_heads 0 only"
        b, _, sq, _ = query.shape
        sk = key.shape[2]
        _check_mask(atten_mask, [(sq, sk), (b, sq, sk), (1, sq, sk), (b, 1, sq, sk), (1, 1, sq, sk)])
        assert atten_mask is None or atten_mask.is_contiguous()
        assert sparse_mode == 0
        self.calls.append(
            (
                "npu_prompt_flash_attention",
                {"atten_mask": atten_mask, "scale": scale_value, "num_key_value_heads": num_key_value_heads},
            )
        )
        return _attention(query, key, value, atten_mask, scale_value, pre_tokens, next_tokens, actual_seq_lengths_kv)

    def npu_incre_flash_attention(
        self,
        query,
        key,
        value,
        *,
        padding_mask=None,
        pse_shift=None,
        atten_mask=None,
        actual_seq_lengths=None,
        antiquant_scale=None,
        antiquant_offset=None,
        block_table=None,
        kv_padding_size=None,
        num_heads=1,
        scale_value=1.0,
        input_layout="BSH",
        num_key_value_heads=0,
        block_size=0,
        inner_precise=1,
    ):
        _check_qkv(query, key, value, num_heads, input_layout, contiguous=False, kv_heads=num_key_value_heads)
        assert query.shape[2] == 1, "incremental attention takes one query row"
        b, sk = query.shape[0], key.shape[2]
        _check_mask(atten_mask, [(b, 1, 1, sk)])  # the shape of the page's example
        assert inner_precise in (0, 1)
        self.calls.append(
            (
                "npu_incre_flash_attention",
                {
                    "key": key,
                    "atten_mask": atten_mask,
                    "lengths": actual_seq_lengths,
                    "scale": scale_value,
                    "num_key_value_heads": num_key_value_heads,
                },
            )
        )
        return _attention(query, key, value, atten_mask, scale_value, kv_lengths=actual_seq_lengths)

    def npu_fused_infer_attention_score(
        self,
        query,
        key,
        value,
        *,
        pse_shift=None,
        atten_mask=None,
        actual_seq_lengths=None,
        actual_seq_lengths_kv=None,
        num_heads=1,
        scale=1.0,
        pre_tokens=ALL_TOKENS,
        next_tokens=ALL_TOKENS,
        input_layout="BSH",
        num_key_value_heads=0,
        sparse_mode=0,
        inner_precise=0,
        block_size=0,
        softmax_lse_flag=False,
        **unused,
    ):
        _check_qkv(query, key, value, num_heads, input_layout, contiguous=True, kv_heads=num_key_value_heads)
        b, _, sq, _ = query.shape
        sk = key.shape[2]
        if sq == 1:  # pre/next tokens have no effect for one query row
            _check_mask(atten_mask, [(b, sk), (b, 1, sk), (b, 1, 1, sk)])
            pre_tokens = next_tokens = ALL_TOKENS
        else:
            _check_mask(atten_mask, [(sq, sk), (b, sq, sk), (1, sq, sk), (b, 1, sq, sk), (1, 1, sq, sk)])
        assert atten_mask is None or atten_mask.is_contiguous()
        assert sparse_mode == 0 and inner_precise in (0, 1, 2, 3)
        self.calls.append(
            (
                "npu_fused_infer_attention_score",
                {
                    "key": key,
                    "atten_mask": atten_mask,
                    "lengths": actual_seq_lengths_kv,
                    "scale": scale,
                    "num_key_value_heads": num_key_value_heads,
                },
            )
        )
        out = _attention(query, key, value, atten_mask, scale, pre_tokens, next_tokens, actual_seq_lengths_kv)
        return out, torch.zeros(1)

    # --- RMSNorm, SwiGLU ---------------------------------------------------------------------------------------
    def npu_rms_norm(self, input, gamma, epsilon=1e-06):  # the page's first argument is ``self``
        assert input.dtype in (torch.float16, torch.bfloat16, torch.float32) and 2 <= input.dim() <= 8
        assert not (self.inference_series and input.dtype == torch.bfloat16), "Atlas inference series: fp32/fp16"
        assert gamma.dtype == input.dtype, "gamma's dtype must be self's"
        assert tuple(gamma.shape) == tuple(input.shape[input.dim() - gamma.dim() :]), "gamma: self's last dims"
        dims = tuple(range(input.dim() - gamma.dim(), input.dim()))
        x = input.float()
        rstd = torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + epsilon)
        self.calls.append(("npu_rms_norm", {"gamma": gamma, "epsilon": epsilon}))
        return (x * rstd * gamma.float()).to(input.dtype), rstd

    def npu_swiglu(self, input, dim=-1):
        assert input.dtype in (torch.float16, torch.bfloat16, torch.float32) and 1 <= input.dim() <= 8
        assert input.is_contiguous(), "non-contiguous tensors not supported"
        assert input.shape[dim] % 2 == 0, "the split dim must divide by 2"
        a, b = input.float().chunk(2, dim=dim)  # A: the first half, B: the second
        self.calls.append(("npu_swiglu", {"dim": dim}))
        return (a * torch.sigmoid(a) * b).to(input.dtype)

    # --- rotary ------------------------------------------------------------------------------------------------
    def npu_rotary_mul(self, input, r1, r2, rotary_mode="half"):  # torch_npu's argument names
        assert input.dim() == r1.dim() == r2.dim() == 4 and rotary_mode == "half"
        assert input.dtype == r1.dtype == r2.dtype and input.dtype in (torch.float16, torch.bfloat16, torch.float32)
        assert r1.shape == r2.shape and r1.shape[2] == 1 and r1.shape[1] == input.shape[1]  # 1S1D / BS1D for BSND
        assert r1.shape[0] in (1, input.shape[0]) and r1.shape[3] == input.shape[3]
        b, _, n, d = input.shape
        if self.npu.jit_compile:  # the page's jit_compile=True constraints (training, A2 and inference series)
            assert not self.atlas_a3, "jit_compile=True lists no Atlas A3 limits"
            assert r1.shape[0] == 1, "jit_compile=True: r1/r2 are 1S1D for BSND (positions shared by the batch)"
            assert d == 128 and b <= 1000 and n <= 1000 and b * n <= 1024, "jit_compile=True: D=128, B*N <= 1024"
        else:  # jit_compile=False: Atlas A2/A3 only
            assert self.binary_family, "jit_compile=False is documented for Atlas A2/A3 only"
            assert d % 2 == 0 and d < 896 and b < 1000 and n < 1000, "jit_compile=False: even D < 896, B, N < 1000"
        assert float(r1.abs().max()) <= 1 and float(r2.abs().max()) <= 1, "r1, r2 must lie in [-1, 1]"
        self.calls.append(("npu_rotary_mul", {"r1": r1}))
        x = input.float()
        x1, x2 = torch.chunk(x, 2, -1)
        return (r1.float() * x + r2.float() * torch.cat((-x2, x1), dim=-1)).to(input.dtype)

    # --- quantized matmul --------------------------------------------------------------------------------------
    @staticmethod
    def npu_convert_weight_to_int4pack(weight: torch.Tensor, inner_k_tiles: int = 0) -> torch.Tensor:
        assert weight.dtype == torch.int32 and weight.dim() == 2 and weight.is_contiguous()
        assert weight.shape[-1] % 8 == 0 and weight.min() >= -8 and weight.max() <= 7
        nibbles = (weight & 0xF).view(weight.shape[0], -1, 8).to(torch.int64)
        words = sum(nibbles[..., i] << (4 * i) for i in range(8))  # value 8j + i in bits 4i..4i+3 of word j
        return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)

    @staticmethod
    def unpack(words: torch.Tensor) -> torch.Tensor:
        """Inverse of the packing along the last dim: int32 words -> signed values."""
        nibbles = torch.stack([(words.to(torch.int64) >> (4 * i)) & 0xF for i in range(8)], dim=-1)
        return torch.where(nibbles >= 8, nibbles - 16, nibbles).flatten(-2)

    def npu_weight_quant_batchmatmul(self, x, weight, antiquant_scale, antiquant_group_size=0, **unused):
        assert x.dim() == 2 and x.dtype in (torch.float16, torch.bfloat16)
        assert antiquant_scale.dtype == x.dtype
        transposed = weight.dim() == 2 and weight.stride(0) == 1 and weight.stride(1) != 1
        if weight.dtype == torch.int32:
            assert transposed, "glm-engine passes the transposed packed weight, as the documented example does"
            values = self.unpack(weight.t()).t()  # (K, N)
        else:
            assert weight.dtype == torch.int8
            values = weight
        k, n = values.shape
        assert x.shape[1] == k, "The k of x and weight should be equal"
        # The page's constraints: "K、N的范围为[1, 65535]"; M in [1, 2^31-1] for a non-transposed x, [1, 65535] for a
        # transposed one (op-plugin docs/context/torch_npu-npu_weight_quant_batchmatmul.md, 约束说明).
        assert 1 <= k <= MAX_KN and 1 <= n <= MAX_KN, f"K={k}, N={n}: the op takes K and N in [1, {MAX_KN}]"
        max_m = MAX_KN if x.stride(0) == 1 and x.shape[0] > 1 else 2**31 - 1
        assert 1 <= x.shape[0] <= max_m, f"M={x.shape[0]} is out of the documented range"
        self.calls.append(("npu_weight_quant_batchmatmul", {"weight": weight, "m": x.shape[0], "k": k, "n": n}))
        assert antiquant_group_size == 0 or (32 <= antiquant_group_size <= k - 1 and antiquant_group_size % 32 == 0)
        groups = 1 if antiquant_group_size == 0 else -(-k // antiquant_group_size)
        assert tuple(antiquant_scale.shape) == (groups, n)
        scale = antiquant_scale.float().repeat_interleave(k // groups, dim=0)
        return (x.float() @ (values.float() * scale)).to(x.dtype)
