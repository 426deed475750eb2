"""Quantized linears in ONNX: the engine's symmetric INT8/INT4 weights (``QuantizedWeight``) in the two forms runtimes
take, chosen by the export target.

* ``ort``: ``com.microsoft::MatMulNBits`` (docs/export.md#quantized-linears-in-onnx). Its dequantization is ``(u - zero)
* scale`` with
  the default zero point ``2**(bits-1)``, so our signed value ``q`` is stored as ``u = q + 2**(bits-1)`` and no zero
  points are written. ``block_size`` must be a power of two >= 16: groupwise weights use their group size; a rowwise
  scale is repeated over blocks of the largest such size dividing the input width (exact: the same scale per block).
* ``tensorrt``: opset-21 ``DequantizeLinear`` on an INT8/INT4 initializer stored ``[in, out]`` (so it feeds
  ``MatMul`` directly), zero point omitted (= 0, symmetric: the only kind TensorRT accepts,
  docs/export.md#quantized-linears-in-onnx). INT8 rowwise is per-axis (a 1-D scale over the output axis). TensorRT takes
  INT4 only blocked along the input axis with blocks of 64 or 128 (TensorRT docs, "Quantized Types"): INT4 groupwise
  keeps its group size (64 or 128 only), INT4 rowwise repeats the row's scale over blocks of 128 (64 where 128 does not
  divide the input width; exact). Input widths that 64 does not divide, INT4 groups of other sizes and INT8 groupwise
  are refused for this target. ONNX Runtime runs this form too.

Scales are our fp16 values converted exactly to the graph's dtype; values are exact integers. The one difference from
the engine's portable path is that the product ``q * scale`` is rounded once in the graph dtype instead of in fp16
first (the reference extraction), ~2**-11 relative per weight in fp32 graphs.
"""

from __future__ import annotations

import torch

from glm_engine.errors import InputError
from glm_engine.export.onnx_builder import GraphBuilder, onnx_type
from glm_engine.exported.names import QuantTarget
from glm_engine.quant.weight import QuantizedWeight

MS_DOMAIN = "com.microsoft"
MATMUL_NBITS_BLOCK_SIZES = (128, 64, 32, 16)  # powers of two >= 16, largest first (ContribOperators.md)
TENSORRT_INT4_BLOCK_SIZES = (128, 64)  # the only INT4 block sizes TensorRT builds (TensorRT docs, "Quantized Types")


def check_target(target: QuantTarget, weight_bits: int, group_size: int | None, in_widths: tuple[int, ...]) -> None:
    """An InputError when ``target`` cannot run this format (say so before writing gigabytes). ``in_widths``: the
    input widths of the model's linears."""
    if target is not QuantTarget.tensorrt:
        return
    if weight_bits == 8 and group_size is not None:
        raise InputError(
            "TensorRT dequantizes blocks (a scale per group) only for INT4 weights: export INT8 rowwise for "
            "--target tensorrt, INT4 groupwise, or --target ort (MatMulNBits)"
        )
    if weight_bits != 4:
        return
    if group_size is not None and group_size not in TENSORRT_INT4_BLOCK_SIZES:
        raise InputError(
            f"TensorRT builds INT4 weights only with blocks of {' or '.join(map(str, TENSORRT_INT4_BLOCK_SIZES))}: "
            f"export with --group-size 128 or 64 (not {group_size}), or use --target ort (MatMulNBits)"
        )
    bad = sorted({k for k in in_widths if k % TENSORRT_INT4_BLOCK_SIZES[-1]})
    if bad:
        raise InputError(
            f"TensorRT builds INT4 weights only in blocks of 64 or 128 along the input width, and 64 does not divide "
            f"the input width {bad[0]} of this model's linears: export INT8 for --target tensorrt, or use --target ort"
        )


def tensorrt_int4_block(in_features: int) -> int:
    """The block size of an INT4 rowwise weight for TensorRT: 128, or 64 where 128 does not divide the width."""
    block = next((b for b in TENSORRT_INT4_BLOCK_SIZES if in_features % b == 0), None)
    if block is None:
        raise InputError(f"TensorRT builds INT4 only in blocks of 64 or 128; 64 does not divide width {in_features}")
    return block


def _rowwise_block(in_features: int) -> int:
    return next((b for b in MATMUL_NBITS_BLOCK_SIZES if in_features % b == 0), MATMUL_NBITS_BLOCK_SIZES[-1])


def pack_matmul_nbits(weight: QuantizedWeight) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(B uint8 [N, blocks, block*bits/8], scales fp16 [N, blocks], block_size)`` for MatMulNBits."""
    n, k, bits = weight.out_features, weight.in_features, weight.bits
    block = weight.group_size if weight.groups > 1 else _rowwise_block(k)
    if block not in MATMUL_NBITS_BLOCK_SIZES:
        raise InputError(f"MatMulNBits takes block sizes {MATMUL_NBITS_BLOCK_SIZES}; this weight has groups of {block}")
    blocks = -(-k // block)
    offset = 2 ** (bits - 1)
    u = weight.values().to(torch.int32) + offset
    u = torch.nn.functional.pad(u, (0, blocks * block - k), value=offset).view(n, blocks, block)  # pads dequantize to 0
    packed = (u[..., 0::2] | (u[..., 1::2] << 4)) if bits == 4 else u  # 4 bits: low nibble first
    packed = packed.to(torch.uint8)
    per_block = weight.scale.expand(n, blocks) if weight.groups == 1 else weight.scale  # a row's scale per block
    return packed.contiguous(), per_block.contiguous(), block


def emit_matmul_nbits(
    g: GraphBuilder, x: str, name: str, weight: QuantizedWeight, dtype: torch.dtype, accuracy_level: int
) -> str:
    """``x @ dequant(W).T`` as one MatMulNBits node."""
    packed, scales, block = pack_matmul_nbits(weight)
    b = g.weight(f"{name}.qweight", packed)
    s = g.weight(f"{name}.scales", scales.to(dtype))
    return g.node(
        "MatMulNBits",
        [x, b, s],
        domain=MS_DOMAIN,
        K=weight.in_features,
        N=weight.out_features,
        bits=weight.bits,
        block_size=block,
        accuracy_level=accuracy_level,
    )


def _pack_int4_onnx(values: torch.Tensor) -> torch.Tensor:
    """Signed 4-bit values (any shape, row-major) two per byte, first element in the low nibble (ONNX INT4)."""
    flat = values.reshape(-1).to(torch.int32) & 0x0F
    if flat.numel() % 2:
        flat = torch.nn.functional.pad(flat, (0, 1))
    return (flat[0::2] | (flat[1::2] << 4)).to(torch.uint8)


def emit_dequantize_matmul(g: GraphBuilder, x: str, name: str, weight: QuantizedWeight, dtype: torch.dtype) -> str:
    """``x @ DequantizeLinear(W^T)`` with the weight stored ``[in, out]`` as INT8/INT4, zero point 0."""
    values_t = weight.values().t().contiguous()  # [in, out]
    dims = list(values_t.shape)
    if weight.bits == 4:
        q = g.weight(f"{name}.qweight", _pack_int4_onnx(values_t), onnx_type("INT4"), dims)
    else:
        q = g.weight(f"{name}.qweight", values_t.to(torch.int8))
    if weight.groups > 1:
        s = g.weight(f"{name}.scales", weight.scale.t().contiguous().to(dtype))  # [groups, out]
        w = g.node("DequantizeLinear", [q, s], axis=0, block_size=weight.group_size)
    elif weight.bits == 4:  # TensorRT's INT4 is blocked only: the row's scale repeated per block (exact)
        block = tensorrt_int4_block(weight.in_features)
        per_block = weight.scale[:, :1].expand(-1, weight.in_features // block).t().contiguous()  # [blocks, out]
        s = g.weight(f"{name}.scales", per_block.to(dtype))
        w = g.node("DequantizeLinear", [q, s], axis=0, block_size=block)
    else:  # INT8 per output channel: a 1-D scale along axis 1 of [in, out]
        s = g.weight(f"{name}.scales", weight.scale[:, 0].to(dtype))
        w = g.node("DequantizeLinear", [q, s], axis=1)
    return g.node("MatMul", [x, w])
