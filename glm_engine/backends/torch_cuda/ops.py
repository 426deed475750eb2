"""The op table the ``torch.cuda`` backends share: the portable ops plus fused attention and quantized linears.

Attention goes to SDPA (prefill), a Triton split-K kernel (one query row per head) or the portable path, per call,
by the table's :class:`~glm_engine.backends.torch_cuda.attention.AttentionPolicy`; the path that last *ran* per phase
is kept in ``attention_path`` with its reason (the SDPA kernel, or why an SDPA call fell back to the reference path;
for grouped key/value heads, whether they were read in place or repeated), and every fallback in
``attention_fallbacks``, which ``bench`` and ``conformance`` report. Quantized weights run through the Triton
dequant-GEMM kernels (``glm_engine.kernels.triton``) when Triton imports and the format and compute dtype suit them;
otherwise through the portable :class:`DequantizingLinear`, with the reason kept on the table (``quant_path``) and
shown by ``Backend.supports``. Cached decode steps replay CUDA graphs (``graphs.py``) where they are usable; where
the decode attention reads every key it is handed (SDPA, unlike the Triton kernel that skips blocked tiles), the
graphs are captured per power-of-two bucket of the filled cache length, so a step attends over at most twice the
filled keys.

Each backend subclasses :class:`TorchCudaOps` with its attention policy and Triton platform
(``backends/cuda/ops.py``: ``CudaOps``; ``backends/rocm_dcu/ops.py``: ``RocmOps``).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch

from glm_engine.backends.torch_cuda.attention import REPEATED, AttentionPath, AttentionPolicy, SdpaRun, run_sdpa
from glm_engine.backends.torch_cuda.graphs import GraphedDecoder, graphs_verdict
from glm_engine.errors import BackendError
from glm_engine.kernels.triton.configs import DEFAULT_SM_COUNT, choose_decode_attention_config
from glm_engine.kernels.triton.linear import kernel_verdict
from glm_engine.ops.interface import DecodeStepper, EagerStepper, PackedLinear
from glm_engine.ops.torch_ops import DequantizingLinear, TorchOps, reference_attention
from glm_engine.quant.weight import QuantizedWeight

TABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
GROUPED_IN_PLACE = "grouped heads read in place (query head i reads key/value head i // (heads / groups))"


class TorchCudaOps(TorchOps):
    """TorchOps with fused attention and Triton-backed quantized linears; a backend's subclass sets ``platform``
    and ``default_policy``.

    ``platform`` is the Triton target (``"cuda"`` or ``"hip"``) whose launch configurations
    (``glm_engine.kernels.triton.configs``) the kernels use.
    """

    platform: ClassVar[str]

    def __init__(self, device: torch.device, dtype: torch.dtype, policy: AttentionPolicy | None = None) -> None:
        if dtype not in TABLE_DTYPES:
            raise BackendError(f"the {self.platform} op table computes in fp16, bf16 or fp32, not {dtype}")
        super().__init__(device, dtype)
        self.policy = policy or self.default_policy()
        self.quant_path: dict[str, str] = {}  # format name -> how the last weight of that format is served
        self.attention_path: dict[str, str] = {}  # "prefill"/"decode" -> the path the last such call ran, and why
        self.attention_fallbacks: dict[str, str] = {}  # phase -> why an SDPA call of that phase ran the reference
        self.sm_count = (
            torch.cuda.get_device_properties(device).multi_processor_count
            if device.type == "cuda"
            else DEFAULT_SM_COUNT
        )

    @abstractmethod
    def default_policy(self) -> AttentionPolicy:
        """The attention paths for this table's device when the caller names none (the vendor's choice)."""

    def decode_stepper(self, runner: Any, steps: int | None, requested: bool | None) -> DecodeStepper:
        """Cached decode steps replayed as CUDA graphs where :func:`graphs_verdict` allows them (its reason becomes
        the stepper's ``reason``); otherwise eager steps, with the verdict's reason."""
        verdict = graphs_verdict(runner, requested, steps)
        if not verdict:
            return EagerStepper(runner, verdict.reason)
        return GraphedDecoder(runner, verdict, key_buckets=self.decode_reads_every_key(runner))

    def decode_reads_every_key(self, runner: Any) -> bool:
        """Whether one-row attention in this table's dtype does work for every key it is handed, blocked or not
        (SDPA, the reference path), so a graph step should be handed only a bucket of the cache, not all of it; the
        Triton decode kernel skips fully blocked tiles and takes the whole cache at no cost."""
        head_dim = getattr(getattr(runner, "config", None), "head_dim", 128)
        return self.policy.choose(1, head_dim, self.dtype)[0] is not AttentionPath.TRITON_DECODE

    def prepare_quantized(self, weight: QuantizedWeight) -> PackedLinear:
        ok, why = kernel_verdict(weight, self.dtype)
        if ok:
            from glm_engine.kernels.triton.linear import TritonQuantLinear

            self.quant_path[weight.format.value] = why
            return TritonQuantLinear(weight.to(self.device))
        self.quant_path[weight.format.value] = f"dequantize per product: {why}"
        return DequantizingLinear(weight.to(self.device))

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocked: torch.Tensor, layer_scale: float
    ) -> torch.Tensor:
        sq = q.shape[2]
        grouped = k.shape[1] != q.shape[1]
        path, why = self.policy.choose(sq, q.shape[-1], q.dtype)
        phase = "decode" if sq == 1 else "prefill"
        if path is AttentionPath.TRITON_DECODE:
            from glm_engine.kernels.triton.decode_attention import decode_attention

            self._record(phase, path, why, GROUPED_IN_PLACE if grouped else "")
            config = choose_decode_attention_config(
                q.shape[0] * q.shape[1], k.shape[2], sm_count=self.sm_count, platform=self.platform
            )
            return decode_attention(q, k, v, blocked, config)
        if path is AttentionPath.SDPA:
            run = run_sdpa(q, k, v, blocked, layer_scale, self.policy.sdpa_kernels)
            if run.fallback:
                self._record_fallback(phase, run)
            else:
                self._record(phase, path, f"{why}; ran the {run.detail}" if run.detail else why, run.grouped_note)
            return run.out
        self._record(phase, path, why, REPEATED if grouped else "")
        return reference_attention(q, k, v, blocked, layer_scale)

    def paged_decode_attention(
        self, q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor | None:
        """The serving core's decode rows in one launch, each sequence's keys read from the KV block pool through
        its slot table (``q [n, h, d]``, pools ``[slots, g, d]``, ``slots [n, longest]``); None where the policy does
        not send decode rows to the Triton kernel (the caller then gathers each sequence's keys)."""
        path, why = self.policy.choose(1, q.shape[-1], q.dtype)
        if path is not AttentionPath.TRITON_DECODE:
            return None
        from glm_engine.kernels.triton.paged_decode_attention import paged_decode_attention

        grouped = GROUPED_IN_PLACE if k_pool.shape[1] != q.shape[1] else ""
        self._record("decode", path, f"{why}; paged: keys read through the block table", grouped)
        config = choose_decode_attention_config(
            q.shape[1], slots.shape[1], sm_count=self.sm_count, platform=self.platform
        )
        return paged_decode_attention(q, k_pool, v_pool, slots, lengths, config)

    def _record_fallback(self, phase: str, run: SdpaRun) -> None:
        """Keep an SDPA call that no allowed fused kernel ran: what ran instead and why, as the phase's path and in
        ``attention_fallbacks`` (kept until the reports clear it, however later calls run)."""
        ran = run.detail if run.path is AttentionPath.SDPA else "reference path"
        self.attention_fallbacks[phase] = f"sdpa fell back to the {ran}: {run.fallback}"
        self._record(
            phase, run.path, f"fallback from sdpa's fused kernels to the {ran}: {run.fallback}", run.grouped_note
        )

    def _record(self, phase: str, path: AttentionPath, why: str, grouped_note: str) -> None:
        """Keep how the last ``phase`` call ran (``attention_path``), with how grouped key/value heads were read."""
        self.attention_path[phase] = f"{path.value}: {why}" + (f"; {grouped_note}" if grouped_note else "")
