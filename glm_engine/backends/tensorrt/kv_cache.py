"""The KV cache of the TensorRT runner: two halves that the engine's ``past`` inputs and ``present`` outputs are bound
to directly, in turn, so the cache is the engine's own I/O and nothing is copied in or out around a call.

The exported graph takes ``past_key_values.{i}.key/value [batch, kv_heads, past, head]`` and returns ``present.{i}.*
[batch, kv_heads, past + new, head]`` (``present = Concat(past, new)``, docs/export.md), both dense tensors. A
preallocated ``[batch, kv_heads, max_length, head]`` buffer holds its first ``past`` positions as a strided view, not a
dense one (each row's positions are followed by the unfilled rest of the row), so it cannot be bound as ``past``;
that is why the runner used to keep separate ``past`` and ``present`` buffers at the largest size besides the cache
(three copies of the KV cache) and copy the whole past into ``past`` every step. Here each layer's keys and values
are kept *dense* at their current length: half A holds ``[batch, kv_heads, length, head]`` packed from its start,
bound as ``past``; the graph writes ``present`` packed into half B; the call then makes B the current half. Two copies
of the cache in all, no copy by the runner, and no per-layer allocation. The graph's ``Concat`` still writes the
past into ``present`` (that is the exported contract, which ONNX Runtime's runner shares).

Every slot starts on a multiple of :data:`ALIGN_BYTES`: ``IExecutionContext::setTensorAddress`` documents "The
pointer must have at least 256-byte alignment" (TensorRT 10 ``NvInferRuntime.h``). The halves are one allocation
from :func:`aligned_empty`, which aligns its start itself rather than relying on the allocator (torch's CUDA caching
allocator aligns blocks to 512 bytes, its CPU allocator, which the tests use, to 64), and each slot is padded to a
multiple of it. The cache keeps ``KVCache``'s surface that the generator uses (``length``, ``batch_size``,
``max_length``, ``expanded``, ``reorder``, ``reset``).
"""

from __future__ import annotations

import torch

from glm_engine.errors import InputError

ALIGN_BYTES = 256  # setTensorAddress: "The pointer must have at least 256-byte alignment"


def aligned_empty(numel: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """An uninitialised 1-D tensor of ``numel`` elements whose first element lies on an :data:`ALIGN_BYTES` boundary:
    a slice of a slightly larger allocation, so it holds whatever the allocator's own alignment is."""
    size = torch.empty(0, dtype=dtype).element_size()
    if ALIGN_BYTES % size:
        raise ValueError(f"{dtype} elements ({size} bytes) do not tile {ALIGN_BYTES}-byte boundaries")
    spare = ALIGN_BYTES // size
    storage = torch.empty(numel + spare, dtype=dtype, device=device)
    skip = (-storage.data_ptr() % ALIGN_BYTES) // size
    return storage[skip : skip + numel]


class TrtKVCache:
    """Keys and values of the tokens seen so far, for every layer, packed ``[batch, heads, length, head_dim]`` in the
    current half; the other half receives the next call's ``present``."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        max_length: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        self.num_layers, self.num_heads, self.head_dim = num_layers, num_heads, head_dim
        self._batch_size, self._max_length = batch_size, max_length
        per_slot = batch_size * num_heads * max_length * head_dim
        align = ALIGN_BYTES // torch.empty(0, dtype=dtype).element_size()
        self.slot_elements = -(-per_slot // align) * align  # each (half, layer, kind) slot starts aligned
        # [half, layer, key/value, slot]; uninitialised: every position is written by the graph before it is read
        halves = aligned_empty(2 * num_layers * 2 * self.slot_elements, dtype, device)
        self.halves = halves.view(2, num_layers, 2, self.slot_elements)
        self.current = 0
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def dtype(self) -> torch.dtype:
        return self.halves.dtype

    @property
    def device(self) -> torch.device:
        return self.halves.device

    def _packed(self, half: int, layer: int, kind: int, length: int) -> torch.Tensor:
        shape = (self.batch_size, self.num_heads, length, self.head_dim)
        return self.halves[half, layer, kind, : self.batch_size * self.num_heads * length * self.head_dim].view(shape)

    def check_room(self, new_tokens: int) -> None:
        """An InputError when ``new_tokens`` more positions would not fit (as ``KVCache.update`` raises)."""
        if self.length + new_tokens > self.max_length:
            raise InputError(f"KV cache holds {self.max_length} tokens; {self.length + new_tokens} were asked for")

    def past(self, layer: int, kind: int) -> torch.Tensor:
        """The cached keys (``kind`` 0) or values (1) of ``layer``: a dense ``[b, h, length, d]`` view, bound as the
        engine's ``past`` input."""
        return self._packed(self.current, layer, kind, self.length)

    def present(self, layer: int, kind: int, new_tokens: int) -> torch.Tensor:
        """Where the engine writes ``present`` for ``new_tokens`` more positions: a dense ``[b, h, length + new, d]``
        view of the other half."""
        return self._packed(1 - self.current, layer, kind, self.length + new_tokens)

    def commit(self, new_tokens: int) -> None:
        """After a call wrote every layer's ``present``: that half is the cache now, ``new_tokens`` longer."""
        self.current = 1 - self.current
        self.length += new_tokens

    def advance(self, num_tokens: int) -> None:
        """``KVCache``'s name for :meth:`commit`."""
        self.commit(num_tokens)

    def reset(self) -> None:
        """Forget every cached position (the halves are kept)."""
        self.length = 0

    def expanded(self, repeats: int) -> TrtKVCache:
        """A cache with every row repeated ``repeats`` times (row i -> rows i*repeats ...), filled part only copied."""
        out = TrtKVCache(
            self.num_layers,
            self.batch_size * repeats,
            self.num_heads,
            self.max_length,
            self.head_dim,
            self.dtype,
            self.device,
        )
        for layer in range(self.num_layers):
            for kind in (0, 1):
                out._packed(out.current, layer, kind, self.length).copy_(
                    self.past(layer, kind).repeat_interleave(repeats, dim=0)
                )
        out.length = self.length
        return out

    def reorder(self, parents: torch.Tensor, shared_prefix: int = 0) -> None:
        """Make row i hold what row ``parents[i]`` held (beam search), in place. Positions before ``shared_prefix``
        (the prompt every beam shares) are already identical, so only moved rows and later positions are copied."""
        rows = torch.arange(self.batch_size, device=parents.device)
        moved = (parents != rows).nonzero().flatten()
        if moved.numel() == 0 or shared_prefix >= self.length:
            return
        moved = moved.to(self.device)
        src = parents.to(self.device)[moved]
        for layer in range(self.num_layers):
            for kind in (0, 1):
                view = self.past(layer, kind)
                view[moved, :, shared_prefix:] = view[src, :, shared_prefix:]  # the right side is gathered first
