"""A preallocated KV cache: one buffer for all layers, written in place, never concatenated.

Layout ``[layers, 2 (k, v), batch, heads, max_length, head_dim]``; keys are stored after rotary, as the reference
caches them. Rows of a batch are aligned (left-padded prompts), so one ``length`` describes every row.
"""

from __future__ import annotations

import torch

from glm_engine.errors import InputError
from glm_engine.ops.interface import OpTable


class KVCache:
    """Keys and values of the tokens seen so far, for every layer."""

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
        self.storage = torch.zeros(
            num_layers, 2, batch_size, num_heads, max_length, head_dim, dtype=dtype, device=device
        )
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.storage.shape[2]

    @property
    def max_length(self) -> int:
        return self.storage.shape[4]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v [b, heads, s, d]`` after the cached tokens; return views of all keys/values so far."""
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise InputError(f"KV cache holds {self.max_length} tokens; {end} were asked for")
        self.storage[layer, 0, :, :, self.length : end] = k
        self.storage[layer, 1, :, :, self.length : end] = v
        return self.storage[layer, 0, :, :, :end], self.storage[layer, 1, :, :, :end]

    def attend(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        blocked: torch.Tensor,
        ops: OpTable,
        layer_scale: float,
    ) -> torch.Tensor:
        """Append ``k, v`` to ``layer``'s cache and attend ``q`` over every cached key (``blocked`` as given)."""
        k, v = self.update(layer, k, v)
        return ops.attention(q, k, v, blocked, layer_scale=layer_scale)

    def advance(self, num_tokens: int) -> None:
        """Mark ``num_tokens`` more positions as filled (after every layer has been updated)."""
        self.length += num_tokens

    def reset(self) -> None:
        """Forget every cached position (the buffers are kept, so a captured CUDA graph stays valid)."""
        self.length = 0

    def expanded(self, repeats: int) -> KVCache:
        """A cache with every row repeated ``repeats`` times (row i -> rows i*repeats ...), filled part only copied."""
        layers, _, batch, heads, max_length, head_dim = self.storage.shape
        out = KVCache(layers, batch * repeats, heads, max_length, head_dim, self.storage.dtype, self.storage.device)
        out.storage[..., : self.length, :] = self.storage[..., : self.length, :].repeat_interleave(repeats, dim=2)
        out.length = self.length
        return out

    def reorder(self, parents: torch.Tensor, shared_prefix: int = 0) -> None:
        """Make row i hold what row ``parents[i]`` held (beam search), in place.

        Only rows whose parent differs are copied, and only positions ``[shared_prefix, length)``: positions before
        ``shared_prefix`` (the prompt every beam shares) are already identical, so a step costs the generated part
        of the moved beams, not the whole cache.
        """
        rows = torch.arange(self.batch_size, device=parents.device)
        moved = (parents != rows).nonzero().flatten()
        if moved.numel() == 0 or shared_prefix >= self.length:
            return
        moved = moved.to(self.storage.device)
        src = parents.to(self.storage.device)[moved]
        window = slice(shared_prefix, self.length)
        self.storage[:, :, moved, :, window] = self.storage[:, :, src, :, window]
