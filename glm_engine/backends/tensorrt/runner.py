"""A ModelRunner over a TensorRT engine: I/O bound by name to torch CUDA tensors (no pycuda), one CUDA stream.

The engine, its runtime, its one execution context and the I/O buffers live in an
:class:`~glm_engine.backends.tensorrt.session.EngineSession`; this class adds the CUDA side: the device, the runner's
stream (each call waits for the caller's stream, runs on its own, and the caller's waits for it) and the KV cache the
generator holds, a :class:`~glm_engine.backends.tensorrt.kv_cache.TrtKVCache` whose halves the engine's ``past`` and
``present`` tensors are bound to directly. The cache stays the generator's source of truth (``expanded`` and
``reorder`` for beam search work on it as on every backend's cache), and nothing is copied between it and the
engine (docs/export.md#tensorrt-engines).
"""

from __future__ import annotations

from pathlib import Path

import torch

from glm_engine.backends.base import DTYPE_NAMES, RunnerCapabilities
from glm_engine.backends.tensorrt.build import check_tensorrt_version
from glm_engine.backends.tensorrt.kv_cache import TrtKVCache
from glm_engine.backends.tensorrt.plan import GraphIO, Limits
from glm_engine.backends.tensorrt.session import EngineSession
from glm_engine.errors import InputError
from glm_engine.exported import ENGINE_FILE, TENSORRT_SECTION, check_files, read_exported
from glm_engine.ops.interface import EagerStepper


class TrtRunner:
    """Runs the engine folder written by ``glm-engine export tensorrt``; implements ``ModelRunner``."""

    def __init__(self, folder: str | Path, device_index: int = 0) -> None:
        info = read_exported(folder)
        description = info.description
        check_files(folder, description)  # a truncated engine is named here, before TensorRT reads it

        import tensorrt as trt

        check_tensorrt_version(trt.__version__, description, folder)
        self.config = info.config
        self.io = GraphIO.from_genai_config(description)
        self.limits = Limits(**description[TENSORRT_SECTION]["limits"])
        self.device = torch.device("cuda", device_index)
        self.dtype = DTYPE_NAMES[self.io.dtype]
        self.capabilities = RunnerCapabilities(kv_cache=True, tensor_parallel=1, op_level=False)
        self.stream = torch.cuda.Stream(self.device)
        self.session = EngineSession(
            trt,
            (Path(folder) / ENGINE_FILE).read_bytes(),
            self.io,
            self.limits,
            description[TENSORRT_SECTION]["profiles"],
            self.device,
            self.dtype,
            self.stream.cuda_stream,
            f"{folder}/{ENGINE_FILE}",
        )

    def decode_stepper(self, steps: int | None = None, requested: bool | None = None) -> EagerStepper:
        return EagerStepper(self, "an exported graph's steps run as whole-graph calls")

    def new_cache(self, batch_size: int, max_length: int) -> TrtKVCache:
        if batch_size > self.limits.max_batch or max_length > self.limits.max_seq:
            raise InputError(
                f"the engine was built for {self.limits.max_batch} rows of {self.limits.max_seq} tokens; "
                f"{batch_size} rows of {max_length} were asked for: rebuild with larger --max-batch/--max-seq"
            )
        return self.session.new_cache(batch_size, max_length)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        blocked: torch.Tensor,
        cache: TrtKVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits ``[b, s, vocab]`` (``[b, 1, vocab]`` with ``last_only``); a cache gets the new keys/values. Without
        a cache (scoring) the call's keys/values go to a cache made for it and dropped."""
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            if cache is None:
                cache = self.new_cache(*input_ids.shape)
            logits = self.session.run(input_ids, position_ids, blocked, cache, last_only)
        caller.wait_stream(self.stream)
        return logits
