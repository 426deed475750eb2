"""The KV cache of the onnxruntime runner: each layer's ``present`` key/value of the last call, kept as ORT values.

Why not :class:`~glm_engine.model.kv_cache.KVCache`: the graph concatenates ``past`` and the new positions into a
fresh ``present`` every call, so a torch buffer as the source of truth costs a copy of the whole past into the feeds
(its slices are not contiguous) and a copy of every ``present`` out of ORT, each step (measured 43 ms/token against
26 ms at 448 cached positions on a 126M model). Holding the ``present`` values of one call and binding them as the
next call's ``past`` (ORT I/O binding) leaves only the graph's own Concat. The cache keeps ``KVCache``'s surface that
the generator uses (``length``, ``batch_size``, ``max_length``, ``expanded``, ``reorder``); beam moves go through
numpy, which is where the rows are (CPU) or one copy away.
"""

from __future__ import annotations

import numpy as np
import torch

from glm_engine.errors import InputError


class OrtKVCache:
    """Keys and values of the tokens seen so far: ``2 * layers`` ORT values ``[batch, heads, length, head_dim]``
    (layer-major, key then value), or none before the first call."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        max_length: int,
        head_dim: int,
        dtype: np.dtype,
        device: tuple[str, int] = ("cpu", 0),
    ) -> None:
        self.num_layers, self.num_heads, self.head_dim = num_layers, num_heads, head_dim
        self.dtype = np.dtype(dtype)
        self.device = device  # (ORT device type, id) the values live on
        self._batch_size, self._max_length = batch_size, max_length
        self.values: list[object] = []  # onnxruntime.OrtValue, filled by the runner
        self._keep_alive: list[np.ndarray] = []  # numpy buffers CPU OrtValues made from numpy point into
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def max_length(self) -> int:
        return self._max_length

    def check_room(self, new_tokens: int) -> None:
        """An InputError when ``new_tokens`` more positions would not fit (as ``KVCache.update`` raises)."""
        if self.length + new_tokens > self.max_length:
            raise InputError(f"KV cache holds {self.max_length} tokens; {self.length + new_tokens} were asked for")

    def store(self, values: list[object], new_tokens: int) -> None:
        """Take the ``present`` values of a call that added ``new_tokens`` positions."""
        self.values = values
        self._keep_alive = []
        self.length += new_tokens

    def reset(self) -> None:
        """Forget every cached position: the next call starts from an empty past."""
        self.values, self._keep_alive, self.length = [], [], 0

    def arrays(self) -> list[np.ndarray]:
        """The cached keys/values as numpy arrays, layer-major: copies, so writing to them cannot reach the ORT values
        (on the CPU ``OrtValue.numpy()`` returns a view of the value's own memory)."""
        return [np.array(value.numpy(), copy=True) for value in self.values]

    def _replace(self, arrays: list[np.ndarray]) -> None:
        import onnxruntime as ort

        arrays = [np.ascontiguousarray(a) for a in arrays]
        kind, index = self.device
        self.values = [ort.OrtValue.ortvalue_from_numpy(a, kind, index) for a in arrays]
        self._keep_alive = arrays if kind == "cpu" else []  # CPU values share the array's memory

    def expanded(self, repeats: int) -> OrtKVCache:
        """A cache with every row repeated ``repeats`` times (row i -> rows i*repeats ...)."""
        out = OrtKVCache(
            self.num_layers,
            self.batch_size * repeats,
            self.num_heads,
            self.max_length,
            self.head_dim,
            self.dtype,
            self.device,
        )
        if self.values:
            out._replace([np.repeat(a, repeats, axis=0) for a in self.arrays()])
        out.length = self.length
        return out

    def reorder(self, parents: torch.Tensor, shared_prefix: int = 0) -> None:
        """Make row i hold what row ``parents[i]`` held (beam search). Positions before ``shared_prefix`` are the
        same in every row, so only rows that move and only the later positions are copied."""
        rows = parents.cpu().numpy()
        moved = np.nonzero(rows != np.arange(self.batch_size))[0]
        if moved.size == 0 or shared_prefix >= self.length or not self.values:
            return
        arrays = self.arrays()
        for a in arrays:
            a[moved, :, shared_prefix:] = a[rows[moved], :, shared_prefix:]
        self._replace(arrays)
