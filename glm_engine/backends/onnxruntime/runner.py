"""A ModelRunner over an exported GLM graph in an ONNX Runtime session, fed through ORT I/O binding.

Each call binds the ids, positions and mask (host arrays ORT copies to the provider), ``logits_to_keep`` and, as
``past_key_values.*``, the ``present.*`` values the previous call left in the cache (:class:`OrtKVCache`): the KV
cache never round-trips through numpy between steps. ``logits_to_keep`` is the last position when the caller asks
for ``last_only`` (generation's prefill and steps) and every position otherwise (scoring, ``Engine.forward``,
``--verify``), so a prefill pays for one row of the output projection. Exports from before ``logits_to_keep``
(format version 1) compute every position and are sliced here.
"""

from __future__ import annotations

import numpy as np
import torch

from glm_engine.backends.base import RunnerCapabilities
from glm_engine.backends.onnxruntime.kv_cache import OrtKVCache
from glm_engine.errors import BackendError, InputError
from glm_engine.exported import LOGITS_TO_KEEP, ExportedInfo
from glm_engine.ops.interface import EagerStepper

# numpy has no bfloat16: a bf16 export needs a runner that binds device memory for every tensor (TensorRT).
NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16}


def check_runnable(info: ExportedInfo) -> None:
    """A BackendError, before any session is made, for an export this runner cannot feed."""
    if info.dtype not in NUMPY_DTYPES:
        raise BackendError(
            f"{info.folder} was exported in {info.dtype}; the onnxruntime backend runs fp32 and fp16 exports "
            "(numpy has no bfloat16): re-export with --dtype fp32 or fp16, or build a TensorRT engine from it"
        )


class OrtRunner:
    """Runs ``info``'s graph in ``session``; implements the ``ModelRunner`` interface. ``kv_device`` is the ORT
    device ``(type, id)`` the KV cache is kept on between calls."""

    def __init__(
        self, info: ExportedInfo, session: object, provider: str, kv_device: tuple[str, int] = ("cpu", 0)
    ) -> None:
        check_runnable(info)
        self.info = info
        self.config = info.config  # the family's config, its positions bounded by the export's context length
        self.session = session
        self.provider = provider
        self.kv_device = kv_device
        self.device = torch.device("cpu")
        self.dtype = info.dtype
        self.capabilities = RunnerCapabilities(kv_cache=True, tensor_parallel=1, op_level=False)
        decoder = info.description["model"]["decoder"]
        self.input_names: list[str] = decoder["input_order"]
        self.output_names: list[str] = decoder["output_order"]
        self.keeps_logits = LOGITS_TO_KEEP in self.input_names  # format version 2 on
        self.num_layers = int(decoder["num_hidden_layers"])
        self.heads = int(decoder["num_key_value_heads"])
        self.head_dim = int(decoder["head_size"])
        self.past_names = [n for n in self.input_names if n.startswith("past_key_values.")]  # layer-major
        self.present_names = self.output_names[1:]  # after logits, in the same order

    def decode_stepper(self, steps: int | None = None, requested: bool | None = None) -> EagerStepper:
        return EagerStepper(self, "an exported graph's steps run as whole-graph calls")

    def new_cache(self, batch_size: int, max_length: int) -> OrtKVCache:
        return OrtKVCache(
            self.num_layers,
            batch_size,
            self.heads,
            max_length,
            self.head_dim,
            NUMPY_DTYPES[self.dtype],
            self.kv_device,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        blocked: torch.Tensor,
        cache: OrtKVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits ``[b, s, vocab]`` (``[b, 1, vocab]`` with ``last_only``); a cache gets the new keys/values."""
        b, s = input_ids.shape
        past = cache.length if cache is not None else 0
        context = self.config.max_sequence_length  # the export's --max-seq: rows of its rotary tables
        if position_ids.numel() and int(position_ids.max()) >= context:
            raise InputError(
                f"position {int(position_ids.max())} is beyond this export's context length {context}: shorten the "
                "input or --out-seq-length, or re-export with a larger --max-seq"
            )
        if cache is not None:
            cache.check_room(s)
            if b != cache.batch_size:
                raise InputError(f"the input has {b} rows but the KV cache was made for {cache.batch_size}")
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", _numpy(input_ids.to(torch.int64)))
        binding.bind_cpu_input("position_ids", _numpy(position_ids.to(torch.int64)))
        binding.bind_cpu_input("attention_mask", _numpy(blocked.to(torch.bool).expand(b, 1, s, past + s)))
        if self.keeps_logits:
            keep = np.arange(s - 1 if last_only else 0, s, dtype=np.int64)
            binding.bind_cpu_input(LOGITS_TO_KEEP, keep)
        if cache is not None and cache.values:
            for name, value in zip(self.past_names, cache.values):
                binding.bind_ortvalue_input(name, value)
        else:
            empty = np.zeros((b, self.heads, 0, self.head_dim), NUMPY_DTYPES[self.dtype])
            for name in self.past_names:
                binding.bind_cpu_input(name, empty)
        binding.bind_output("logits", "cpu")
        if cache is not None:
            kind, index = self.kv_device
            for name in self.present_names:
                binding.bind_output(name, kind, index)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if cache is not None:
            cache.store(list(outputs[1:]), s)
        logits = torch.from_numpy(outputs[0].numpy())
        return logits[:, -1:] if last_only else logits


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy view (a copy only when the tensor is not contiguous), as ORT requires."""
    return np.ascontiguousarray(tensor.detach().cpu().numpy())
