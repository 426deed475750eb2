"""A ModelRunner over an exported GLM graph in an ONNX Runtime session.

The generator's KV cache (:class:`~glm_engine.model.kv_cache.KVCache`) stays the source of truth, so beam search,
blank filling and the CLI work unchanged: each call feeds the cached positions as ``past_key_values.*`` and writes
the new positions of ``present.*`` back into the cache. Tensors are CPU torch tensors shared with numpy (no copy for
contiguous inputs); ORT copies them to the provider's device.
"""

from __future__ import annotations

import numpy as np
import torch

from glm_engine.config import GLMConfig
from glm_engine.errors import BackendError, InputError
from glm_engine.export.onnx_export import ExportedInfo
from glm_engine.model.kv_cache import KVCache

# numpy has no bfloat16: a bf16 export needs a runner that binds device memory (TensorRT, or ORT I/O binding).
NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16}


def check_runnable(info: ExportedInfo) -> None:
    """A BackendError, before any session is made, for an export this runner cannot feed."""
    if info.dtype not in NUMPY_DTYPES:
        raise BackendError(
            f"{info.folder} was exported in {info.dtype}; the onnxruntime backend runs fp32 and fp16 exports "
            "(numpy has no bfloat16): re-export with --dtype fp32 or fp16, or build a TensorRT engine from it"
        )


class OrtRunner:
    """Runs ``info``'s graph in ``session``; implements the ``ModelRunner`` interface."""

    def __init__(self, info: ExportedInfo, session: object, provider: str) -> None:
        check_runnable(info)
        self.info = info
        self.config: GLMConfig = info.config
        self.session = session
        self.provider = provider
        self.device = torch.device("cpu")
        self.dtype = info.dtype
        decoder = info.description["model"]["decoder"]
        self.input_names: list[str] = decoder["input_order"]
        self.output_names: list[str] = decoder["output_order"]
        self.num_layers = int(decoder["num_hidden_layers"])
        self.heads = int(decoder["num_key_value_heads"])
        self.head_dim = int(decoder["head_size"])

    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        return KVCache(self.num_layers, batch_size, self.heads, max_length, self.head_dim, self.dtype, self.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        blocked: torch.Tensor,
        cache: KVCache | None = None,
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
        feeds: dict[str, np.ndarray] = {
            "input_ids": _numpy(input_ids.to(torch.int64)),
            "position_ids": _numpy(position_ids.to(torch.int64)),
            "attention_mask": _numpy(blocked.to(torch.bool).expand(b, 1, s, past + s)),
        }
        empty = np.zeros((b, self.heads, 0, self.head_dim), NUMPY_DTYPES[self.dtype])
        for layer in range(self.num_layers):
            for index, kv in enumerate(("key", "value")):
                name = f"past_key_values.{layer}.{kv}"
                feeds[name] = empty if cache is None else _numpy(cache.storage[layer, index, :, :, :past])
        outputs = self.session.run(self.output_names, feeds)
        if cache is not None:
            for layer in range(self.num_layers):
                keys = torch.from_numpy(outputs[1 + 2 * layer][:, :, past:])
                values = torch.from_numpy(outputs[2 + 2 * layer][:, :, past:])
                cache.update(layer, keys, values)
            cache.advance(s)
        logits = torch.from_numpy(outputs[0])
        return logits[:, -1:] if last_only else logits


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy view (a copy only when the tensor is not contiguous), as ORT requires."""
    return np.ascontiguousarray(tensor.detach().cpu().numpy())
