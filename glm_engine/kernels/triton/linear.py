"""The Triton-backed quantized linear: the runtime form ``TorchCudaOps.prepare_quantized`` gives a stored weight.

The kernels read glm-engine's stored layout as it is (int8 ``[out, in]`` or packed INT4 ``[out, in / 2]``, row-major,
fp16 scales ``[out, groups]``): each output row's bytes are contiguous along K, which is what both kernels stream,
so the weight occupies exactly its stored size on the device and no re-layout is needed at load.
"""

from __future__ import annotations

import torch

from glm_engine.errors import BackendError
from glm_engine.kernels.triton import triton_verdict
from glm_engine.kernels.triton.configs import DEFAULT_SM_COUNT, Variant, choose_config, unsupported_reason
from glm_engine.ops.interface import PackedLinear
from glm_engine.quant.weight import QuantizedWeight

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16)


def kernel_verdict(weight: QuantizedWeight, dtype: torch.dtype) -> tuple[bool, str]:
    """``(ok, reason)``: whether the Triton kernels run this weight with ``dtype`` activations here."""
    if dtype not in ACTIVATION_DTYPES:
        return False, f"the Triton dequant-GEMM kernels take fp16/bf16 activations, not {dtype}"
    ok, why = triton_verdict()
    if not ok:
        return False, why
    group_size = weight.group_size if weight.groups > 1 else None
    why = unsupported_reason(weight.bits, weight.in_features, group_size)
    return (not why), why or "fused Triton dequant-GEMM"


def _device_facts(device: torch.device) -> tuple[int, str]:
    """Streaming multiprocessors (compute units) of ``device`` and the Triton platform it compiles for."""
    platform = "hip" if torch.version.hip else "cuda"
    if device.type != "cuda":
        return DEFAULT_SM_COUNT, platform
    return torch.cuda.get_device_properties(device).multi_processor_count, platform


class TritonQuantLinear(PackedLinear):
    """``x @ W.T`` through the fused dequant-GEMM kernels: decode kernel for a few rows, tiled tl.dot otherwise."""

    def __init__(self, weight: QuantizedWeight, variant: Variant | None = None) -> None:
        super().__init__(weight)
        ok, why = triton_verdict()
        if not ok:
            raise BackendError(why)
        group_size = weight.group_size if weight.groups > 1 else None
        why = unsupported_reason(weight.bits, weight.in_features, group_size)
        if why:
            raise BackendError(why)
        self.stored = weight.stored.contiguous()
        self.scale = weight.scale.contiguous()
        self.bits = weight.bits
        self.group_size = group_size
        self.variant = variant  # None: chosen per call by the number of rows
        self.sm_count, self.platform = _device_facts(self.stored.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from glm_engine.kernels.triton.dequant_gemm import dequant_matmul

        if x.shape[-1] != self.in_features:
            raise BackendError(f"input width {x.shape[-1]} does not match the weight's {self.in_features}")
        if x.dtype not in ACTIVATION_DTYPES:
            raise BackendError(f"the Triton dequant-GEMM kernels take fp16/bf16 activations, not {x.dtype}")
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] == 0:
            return x.new_empty(*x.shape[:-1], self.out_features)
        config = choose_config(
            rows.shape[0],
            self.out_features,
            self.in_features,
            self.bits,
            self.group_size,
            sm_count=self.sm_count,
            platform=self.platform,
            variant=self.variant,
        )
        out = dequant_matmul(rows, self.stored, self.scale, self.bits, config)
        return out.reshape(*x.shape[:-1], self.out_features)

    @property
    def nbytes(self) -> int:
        return self.stored.numel() + self.scale.numel() * self.scale.element_size()
