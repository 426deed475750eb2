"""Which ops of the op contract an exported graph can hold: what ``glm-engine export onnx`` emits today.

The graph-level backends (onnxruntime, tensorrt) run exported graphs, so an op "runs" there exactly when the exporter
writes it (``export/decoder_onnx.py``): LayerNorm and RMSNorm, GeGLU, tanh GeLU and SwiGLU, the DeepNorm residual,
rotary, per-head and grouped-query attention, linears and the embedding. An op outside :data:`EXPORTED_OPS` gets a
no from those backends with :func:`unexported_reason`. The exporter owns this list: when it learns to emit an op, the
op joins :data:`EXPORTED_OPS` in the same change.
"""

from __future__ import annotations

from glm_engine.exported.names import EXPORT_FORMAT_VERSION
from glm_engine.ops.interface import Op

EXPORTED_OPS = frozenset(
    {
        Op.EMBEDDING,
        Op.LAYERNORM,
        Op.LINEAR,
        Op.ROTARY,
        Op.ATTENTION,
        Op.GEGLU,
        Op.GELU,
        Op.DEEPNORM_RESIDUAL,
        Op.RMSNORM,
        Op.SWIGLU,
        Op.GROUPED_ATTENTION,
    }
)


def unexported_reason(op: Op) -> str:
    """Why a graph-level backend cannot run ``op``, or "" when exported graphs can hold it."""
    if op in EXPORTED_OPS:
        return ""
    emitted = ", ".join(o.value for o in Op if o in EXPORTED_OPS)
    return (
        f"exported graphs (format version {EXPORT_FORMAT_VERSION}) hold no {op.value}: the ONNX export emits {emitted} "
        "only; run the model on an op-level backend (cpu, cuda, rocm_dcu, ascend)"
    )
