"""A ModelRunner over a TensorRT engine: I/O bound by name to torch CUDA tensors (no pycuda), one CUDA stream.

Every I/O tensor has one buffer allocated when the runner opens, sized for the engine's limits
(``plan.binding_plan``); each call binds views of them with ``set_input_shape``/``set_tensor_address`` and runs
``execute_async_v3`` on the runner's stream (TensorRT 10's name-based API, docs/export.md#tensorrt-engines). The
generator's KV cache stays the source of truth (as for onnxruntime): its cached positions are copied into the ``past``
buffers and the new positions of ``present`` copied back, so beam search reorders one cache for every backend. Copying
the past costs one read of the cache per step on the device, which the graph's ``Concat`` reads anyway.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from glm_engine.backends.base import DTYPE_NAMES, RunnerCapabilities
from glm_engine.backends.tensorrt.plan import PREFILL, GraphIO, Limits, binding_plan, check_call, profile_for
from glm_engine.errors import InputError
from glm_engine.exported import ENGINE_FILE, TENSORRT_SECTION, check_files, read_exported
from glm_engine.exported.names import KV_KINDS, PAST_NAMES, PRESENT_NAMES
from glm_engine.model.kv_cache import KVCache
from glm_engine.ops.interface import EagerStepper

ROLE_DTYPES = {
    "input_ids": torch.int64,
    "position_ids": torch.int64,
    "attention_mask": torch.bool,
    "logits_to_keep": torch.int64,
}


class TrtRunner:
    """Runs the engine folder written by ``glm-engine export tensorrt``; implements ``ModelRunner``."""

    def __init__(self, folder: str | Path, device_index: int = 0) -> None:
        info = read_exported(folder)
        description = info.description
        check_files(folder, description)  # a truncated engine is named here, before TensorRT reads it

        import tensorrt as trt

        self.config = info.config
        self.io = GraphIO.from_genai_config(description)
        self.limits = Limits(**description[TENSORRT_SECTION]["limits"])
        self.profiles: list[str] = description[TENSORRT_SECTION]["profiles"]
        self.device = torch.device("cuda", device_index)
        self.dtype = DTYPE_NAMES[self.io.dtype]
        self.capabilities = RunnerCapabilities(kv_cache=True, tensor_parallel=1, op_level=False)
        self.stream = torch.cuda.Stream(self.device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self.engine = runtime.deserialize_cuda_engine((Path(folder) / ENGINE_FILE).read_bytes())
        if self.engine is None:
            raise InputError(
                f"{folder}/{ENGINE_FILE} does not load with TensorRT {trt.__version__} on this GPU: rebuild"
            )
        self.contexts = {}
        for index, name in enumerate(self.profiles):  # one execution context per profile, selected once
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(index, self.stream.cuda_stream)
            self.contexts[name] = context
        self.plan = binding_plan(self.io, self.limits)
        self.buffers = {
            b.name: torch.empty(b.capacity, dtype=ROLE_DTYPES.get(b.role, self.dtype), device=self.device)
            for b in self.plan
        }

    def decode_stepper(self, steps: int | None = None, requested: bool | None = None) -> EagerStepper:
        return EagerStepper(self, "an exported graph's steps run as whole-graph calls")

    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        if batch_size > self.limits.max_batch or max_length > self.limits.max_seq:
            raise InputError(
                f"the engine was built for {self.limits.max_batch} rows of {self.limits.max_seq} tokens; "
                f"{batch_size} rows of {max_length} were asked for: rebuild with larger --max-batch/--max-seq"
            )
        io = self.io
        return KVCache(io.num_layers, batch_size, io.num_kv_heads, max_length, io.head_size, self.dtype, self.device)

    def _view(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return self.buffers[name][: math.prod(shape)].view(shape)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        blocked: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        b, s = input_ids.shape
        past = cache.length if cache is not None else 0
        check_call(self.limits, b, past, s)
        context = self.contexts[profile_for(past, s) if cache is not None else PREFILL]
        feeds = {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "attention_mask": blocked.expand(b, 1, s, past + s),
        }
        if self.io.keeps_logits:  # the last position for generation, every one for scoring
            feeds["logits_to_keep"] = torch.arange(s - 1 if last_only else 0, s, device=self.device)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for name, value in feeds.items():
                self._bind_input(context, name, value)
            for layer in range(self.io.num_layers):
                for index, kv in enumerate(KV_KINDS):
                    shape = (b, self.io.num_kv_heads, past, self.io.head_size)
                    stored = cache.storage[layer, index, :, :, :past] if cache is not None else None
                    self._bind_input(context, PAST_NAMES[kv] % layer, stored, shape)
            outputs = {}
            for binding in self.plan:
                if not binding.is_input:
                    shape = tuple(context.get_tensor_shape(binding.name))
                    outputs[binding.name] = self._view(binding.name, shape)
                    context.set_tensor_address(binding.name, self.buffers[binding.name].data_ptr())
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise InputError("TensorRT refused to run this call (its log says why)")
            if cache is not None:
                for layer in range(self.io.num_layers):
                    keys = outputs[PRESENT_NAMES["key"] % layer][:, :, past:]
                    values = outputs[PRESENT_NAMES["value"] % layer][:, :, past:]
                    cache.update(layer, keys, values)
                cache.advance(s)
            logits = outputs["logits"][:, -1:] if last_only else outputs["logits"]
            logits = logits.clone()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return logits

    def _bind_input(
        self, context: object, name: str, value: torch.Tensor | None, shape: tuple[int, ...] | None = None
    ) -> None:
        """Copy ``value`` into the named buffer (on the runner's stream), set its shape and address."""
        shape = tuple(value.shape) if value is not None else shape
        view = self._view(name, shape)
        if value is not None and view.numel():
            view.copy_(value, non_blocking=True)
        if not context.set_input_shape(name, shape):
            raise InputError(
                f"the TensorRT engine's profile does not take {name} of shape {shape} (built for --max-batch "
                f"{self.limits.max_batch}, --max-seq {self.limits.max_seq}): rebuild it with larger limits"
            )
        context.set_tensor_address(name, self.buffers[name].data_ptr())
