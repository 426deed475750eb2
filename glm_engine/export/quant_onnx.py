"""Quantized linears in ONNX: the engine's symmetric INT8/INT4 weights (``QuantizedWeight``) in the two forms runtimes
take, chosen by the export target.

* ``ort``: ``com.microsoft::MatMulNBits`` (anchors.md section 4.1). Its dequantization is ``(u - zero) * scale`` with
  the default zero point ``2**(bits-1)``, so our signed value ``q`` is stored as ``u = q + 2**(bits-1)`` and no zero
  points are written. ``block_size`` must be a power of two >= 16: groupwise weights use their group size; a rowwise
  scale is repeated over blocks of the largest such size dividing the input width (exact: the same scale per block).
* ``tensorrt``: opset-21 ``DequantizeLinear`` on an INT8/INT4 initializer stored ``[in, out]`` (so it feeds
  ``MatMul`` directly), zero point omitted (= 0, symmetric: the only kind TensorRT accepts, anchors.md section 3.6).
  Rowwise is per-axis (a 1-D scale over the output axis); groupwise is blocked along the input axis, which TensorRT
  supports for INT4 only, so INT8 groupwise is refused for this target. ONNX Runtime runs this form too.

Scales are our fp16 values converted exactly to the graph's dtype; values are exact integers. The one difference from
the engine's portable path is that the product ``q * scale`` is rounded once in the graph dtype instead of in fp16
first (the reference extraction), ~2**-11 relative per weight in fp32 graphs.
"""

from __future__ import annotations

from enum import Enum

import torch

from glm_engine.errors import InputError
from glm_engine.export.onnx_builder import GraphBuilder, onnx_type
from glm_engine.quant.weight import QuantizedWeight

MS_DOMAIN = "com.microsoft"
MATMUL_NBITS_BLOCK_SIZES = (128, 64, 32, 16)  # powers of two >= 16, largest first (ContribOperators.md)


class QuantTarget(str, Enum):
    ort = "ort"
    tensorrt = "tensorrt"


def check_target(target: QuantTarget, weight_bits: int, groupwise: bool) -> None:
    """An InputError when ``target`` cannot run this format (say so before writing gigabytes)."""
    if target is QuantTarget.tensorrt and weight_bits == 8 and groupwise:
        raise InputError(
            "TensorRT dequantizes blocks (a scale per group) only for INT4 weights: export INT8 rowwise for "
            "--target tensorrt, INT4 groupwise, or --target ort (MatMulNBits)"
        )


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
    if weight.groups == 1:  # per output channel: a 1-D scale along axis 1 of [in, out]
        s = g.weight(f"{name}.scales", weight.scale[:, 0].to(dtype))
        w = g.node("DequantizeLinear", [q, s], axis=1)
    else:
        s = g.weight(f"{name}.scales", weight.scale.t().contiguous().to(dtype))  # [groups, out]
        w = g.node("DequantizeLinear", [q, s], axis=0, block_size=weight.group_size)
    return g.node("MatMul", [x, w])
