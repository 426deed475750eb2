"""Which dequant-GEMM kernel and tile sizes run a product, chosen by an explicit rule instead of autotuning.

Two kernels (``dequant_gemm.py``):

- ``decode``: matrix-vector style for ``M <= DECODE_MAX_M`` rows (token-by-token generation). Each program streams a
  ``[BLOCK_N, BLOCK_K]`` tile of the quantized weight once and multiplies it by every row of ``x`` on the CUDA/vector
  cores; the weight bytes dominate, so the aim is enough programs to saturate memory bandwidth. Each weight tile is
  dequantized once and reused for every row, so registers do not grow with ``M`` (:func:`decode_values_per_thread`).
  When the output width alone gives too few programs, K is split (``split_k``) and the fp32 partial sums are added
  by one more small launch, in a fixed order, fused with the cast (deterministic, unlike atomics).
- ``prefill``: tiled ``tl.dot`` (tensor cores / MFMA) for larger ``M``, with grouped program order for L2 reuse.

Both apply scales after a block's fp32 partial product: per block for groupwise weights (so ``BLOCK_K`` must divide
the group size, see :func:`block_k_for`), once at the end for rowwise ones.

The tile sizes below are starting points, not measured optima: ``benchmarks/quant_gpu.py`` measures them on a GPU.
Intended targets: H100 (132 SMs, 3.35 TB/s; ``num_stages=3`` pipelining through shared memory) and MI-class GPUs
(MI250/MI300, Hygon DCU: 64-wide wavefronts, so the same ``num_warps`` means twice the threads; ``num_stages=2``, the
depth the AMD backend's stream pipeliner is tuned for).

The tables are keyed by Triton's compile target (``platform``: ``"cuda"`` or ``"hip"``), which the ``torch.cuda``
backends' op tables name (``TorchCudaOps.platform``). They stay here, beside the rules that read them and the
limits the kernels impose, because kernels sit below backends and never import them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

DECODE_MAX_M = 4  # rows at or below which the matrix-vector kernel beats tl.dot tiles padded to 16 rows
MIN_DOT_K = 16  # tl.dot needs K >= 16 per operand; an INT4 block of BLOCK_K splits into two dots of BLOCK_K / 2
DEFAULT_SM_COUNT = 132  # H100 SXM; used when no device is asked (interpreter, CPU tensors)
DECODE_WAVES = 2  # decode aims at this many programs per SM before it splits K
SPLIT_SUM_BLOCK = 1024  # outputs per program of the split-K sum: 8 fp32 values a thread at 4 warps of 32
SPLIT_SUM_WARPS = 4


class Variant(str, Enum):
    DECODE = "decode"
    PREFILL = "prefill"


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch options of one kernel launch."""

    variant: Variant
    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1  # decode only: programs along K whose fp32 partials are summed afterwards
    group_m: int = 8  # prefill only: rows of output tiles visited together (L2 reuse of weight tiles)
    num_warps: int = 4
    num_stages: int = 2


# Starting points per (variant, bits, platform). INT4 decode reads 128 bytes of each weight row per tile too, which
# is twice the values: 8 warps on CUDA keep its live values per thread near INT8's (decode_values_per_thread).
_DECODE = {
    ("cuda", 8): KernelConfig(Variant.DECODE, block_m=1, block_n=64, block_k=128, num_warps=4, num_stages=3),
    ("cuda", 4): KernelConfig(Variant.DECODE, block_m=1, block_n=64, block_k=256, num_warps=8, num_stages=3),
    ("hip", 8): KernelConfig(Variant.DECODE, block_m=1, block_n=64, block_k=128, num_warps=4, num_stages=2),
    ("hip", 4): KernelConfig(Variant.DECODE, block_m=1, block_n=64, block_k=256, num_warps=4, num_stages=2),
}
# HIP prefill takes BLOCK_K = 32: at 64, two stages of fp16 A and int8 B plus the dequantized B operand fill the whole
# 64 KiB LDS of MI200/MI300 (shared_memory_bytes), which leaves the compiler nothing for its own scratch and caps
# occupancy at one program per CU. At 32 it is half that, and tests/test_rocm_configs.py holds every HIP tile to
# LDS_BUDGET of its arch's LDS.
_PREFILL = {
    "cuda": KernelConfig(Variant.PREFILL, block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3),
    "hip": KernelConfig(Variant.PREFILL, block_m=128, block_n=128, block_k=32, num_warps=8, num_stages=2),
}
_PREFILL_SMALL_M = 64  # up to this many rows, 64-row tiles waste less of the tensor-core work
LDS_BUDGET = 0.75  # share of an AMD arch's LDS a HIP tile may plan for; the rest is the compiler's scratch


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def block_k_for(block_k: int, group_size: int | None) -> int:
    """The largest power of two <= ``block_k`` that divides ``group_size`` (``block_k`` itself when rowwise)."""
    return block_k if group_size is None else math.gcd(block_k, group_size)


def unsupported_reason(bits: int, in_features: int, group_size: int | None) -> str:
    """Why the Triton kernels cannot run this weight, or "" when they can (both variants, any M)."""
    if group_size is None:
        return ""
    min_block = MIN_DOT_K * (2 if bits == 4 else 1)
    if group_size % min_block:
        return (
            f"groupwise INT{bits} with group size {group_size}: the Triton kernels need groups that are a multiple "
            f"of {min_block} columns (a tl.dot block)"
        )
    return ""


def choose_config(
    m: int,
    n: int,
    k: int,
    bits: int,
    group_size: int | None,
    *,
    sm_count: int = DEFAULT_SM_COUNT,
    platform: str = "cuda",
    variant: Variant | None = None,
) -> KernelConfig:
    """The kernel and tiles for an ``[m, k] @ [k, n]`` product with a ``bits``-bit weight.

    ``group_size`` is None for rowwise weights. ``variant`` forces a kernel (tests run both at every M).
    """
    variant = variant or (Variant.DECODE if m <= DECODE_MAX_M else Variant.PREFILL)
    if variant is Variant.DECODE:
        base = _DECODE[(platform, bits)]
        block_m = min(next_power_of_2(m), next_power_of_2(DECODE_MAX_M))
        block_k = block_k_for(base.block_k, group_size)
        n_blocks = math.ceil(n / base.block_n) * math.ceil(m / block_m)
        k_blocks = math.ceil(k / block_k)
        wanted = math.ceil(DECODE_WAVES * sm_count / n_blocks)
        return replace(base, block_m=block_m, block_k=block_k, split_k=max(1, min(wanted, k_blocks)))
    base = _PREFILL[platform]
    block_m = 64 if m <= _PREFILL_SMALL_M else base.block_m
    block_k = block_k_for(base.block_k, group_size)
    return replace(base, block_m=block_m, block_k=block_k, num_warps=4 if block_m == 64 else base.num_warps)


def check_config(config: KernelConfig, bits: int, group_size: int | None) -> None:
    """Raise ValueError when ``config`` cannot run this weight (tile sizes the kernels' indexing assumes)."""
    for name in ("block_m", "block_n", "block_k"):
        value = getattr(config, name)
        if value != next_power_of_2(value):
            raise ValueError(f"{name}={value} must be a power of two (tl.arange)")
    if group_size is not None and group_size % config.block_k:
        raise ValueError(f"block_k={config.block_k} must divide the group size {group_size}")
    if bits == 4 and config.block_k < 2:
        raise ValueError("INT4 blocks hold at least one packed byte (block_k >= 2)")
    if config.variant is Variant.PREFILL:
        dot_k = config.block_k // (2 if bits == 4 else 1)
        if min(config.block_m, config.block_n, dot_k) < MIN_DOT_K:
            raise ValueError(f"tl.dot needs tiles of at least {MIN_DOT_K} (block_m, block_n, block_k per dot)")


def decode_values_per_thread(config: KernelConfig, bits: int, warp_size: int = 32) -> int:
    """fp32 values per thread the decode kernel keeps live, estimated from its tile shapes alone.

    Live at once: the dequantized weight tile (``BLOCK_N x BLOCK_K`` values, INT4's two nibble halves together), one
    row's product with it before the sum (INT4 sums one half, then the other), and the ``[BLOCK_M, BLOCK_N]`` partial
    and accumulator, spread over ``num_warps * warp_size`` threads (64-wide wavefronts on AMD). The rows are visited
    in turn, so only the last term grows with ``BLOCK_M``: at the CUDA INT8 tiles (64 x 128, 4 warps) 129 values at
    M = 1 and 132 at M = 4, where a broadcast ``[BLOCK_M, BLOCK_N, BLOCK_K]`` product alone is 256 at M = 4 and
    spills past the 255 registers a thread may hold. An upper bound: the compiler may fold the product into the sum.
    """
    threads = config.num_warps * warp_size
    weight = config.block_n * config.block_k
    product = weight // (2 if bits == 4 else 1)
    return math.ceil((weight + product + 2 * config.block_m * config.block_n) / threads)


def shared_memory_bytes(config: KernelConfig, bits: int, activation_bytes: int = 2) -> int:
    """Shared memory (LDS on AMD) one program of ``config`` needs, estimated from tile sizes, stages and dtypes.

    Prefill: ``num_stages`` buffers of the activation tile (``BLOCK_M x BLOCK_K``) and of the stored weight tile
    (``BLOCK_K x BLOCK_N`` bytes, INT4 half that), plus the weight tile dequantized to the activation dtype, which
    reaches ``tl.dot`` through shared memory as an operand layout; the epilogue's ``BLOCK_M x BLOCK_N`` output tile
    in the activation dtype (a layout conversion before the store) reuses that space, so the larger of the two
    counts. Decode (no ``tl.dot``): ``num_stages`` buffers of its weight and activation tiles, if the pipeliner staged
    them, and the ``[BLOCK_M, BLOCK_N]`` fp32 partial sums of its cross-thread reductions. A buffer per stage is the
    most a software pipeliner keeps in shared memory (AMD's stream pipeliner stages only ``tl.dot`` operands there
    and the rest in registers, triton-lang/triton#4148), so this is an upper bound, which a budget check wants.
    """
    weight_bytes = config.block_k * config.block_n // (2 if bits == 4 else 1)
    activations = config.block_m * config.block_k * activation_bytes
    if config.variant is Variant.PREFILL:
        operand = config.block_k * config.block_n * activation_bytes
        loop = config.num_stages * (activations + weight_bytes) + operand
        return max(loop, config.block_m * config.block_n * activation_bytes)
    return config.num_stages * (activations + weight_bytes) + config.block_m * config.block_n * 4


# --- decode attention (``decode_attention.py``): one query row per (batch, head), keys split across programs ---

ATTENTION_BLOCK_N = 64  # keys per tile: a [64, 128] fp16 K tile is 16 KiB, streamed once
MAX_ATTENTION_HEAD_DIM = 256  # the whole head is one register tile (tl.arange over next_power_of_2(head_dim))
MIN_BLOCKS_PER_SPLIT = 2  # a split smaller than this costs more in the combine than it gains in parallelism
MAX_ATTENTION_SPLITS = 64  # bounds the fp32 partials: splits x (head_dim + 2) floats per (batch, head)


@dataclass(frozen=True)
class DecodeAttentionConfig:
    """Launch shape of the split-K decode attention kernel."""

    block_n: int
    num_splits: int
    num_warps: int
    num_stages: int


# Same threads per program on both: 4 warps of 32 on NVIDIA, 2 wavefronts of 64 on AMD/DCU. num_stages=1 on HIP: the
# loop body is guarded by a data-dependent branch (fully blocked tiles are skipped), which the AMD stream pipeliner
# does not pipeline, so deeper stages would only cost LDS.
_ATTENTION_LAUNCH = {"cuda": (4, 2), "hip": (2, 1)}


def choose_decode_attention_config(
    batch_heads: int, kv_length: int, *, sm_count: int = DEFAULT_SM_COUNT, platform: str = "cuda"
) -> DecodeAttentionConfig:
    """Tiles and K splits for ``batch_heads`` single-row queries over ``kv_length`` keys.

    One program per (batch, head) leaves most SMs idle at small batch (GLM-130B at TP=8: 12 heads per rank), so the
    keys are split until there are about ``DECODE_WAVES`` programs per SM, keeping at least
    ``MIN_BLOCKS_PER_SPLIT`` tiles per split.
    """
    num_warps, num_stages = _ATTENTION_LAUNCH[platform]
    blocks = math.ceil(kv_length / ATTENTION_BLOCK_N)
    wanted = math.ceil(DECODE_WAVES * sm_count / max(1, batch_heads))
    most = max(1, min(MAX_ATTENTION_SPLITS, blocks // MIN_BLOCKS_PER_SPLIT))
    return DecodeAttentionConfig(ATTENTION_BLOCK_N, max(1, min(wanted, most)), num_warps, num_stages)
