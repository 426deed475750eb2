"""A fixed pool of KV-cache blocks (``block_size`` token slots each) shared by every running sequence.

Storage ``[layers, 2 (k, v), blocks * block_size, kv_heads, head_dim]``: a sequence's token ``p`` lives in slot
``table[p // block_size] * block_size + p % block_size`` of its block table. Blocks are handed out and taken back
whole; the pool never grows, so a full pool means waiting or preemption, never an out-of-memory error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from glm_engine.errors import InputError


class BlockPool:
    """The blocks, which of them are free, and the tensors behind them."""

    def __init__(
        self,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise InputError(
                f"a KV cache needs at least one block of at least one token, got {num_blocks}x{block_size}"
            )
        self.block_size = block_size
        self.num_blocks = num_blocks
        shape = (num_layers, 2, num_blocks * block_size, kv_heads, head_dim)
        try:
            self.storage = torch.zeros(shape, dtype=dtype, device=device)
        except (torch.OutOfMemoryError, RuntimeError) as exc:  # RuntimeError: a host allocation that failed
            size = self.bytes_per_block(num_layers, kv_heads, head_dim, block_size, dtype) * num_blocks
            raise InputError(
                f"cannot allocate a KV cache of {size} bytes on {device} ({exc}); give it less memory"
            ) from None
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: the lowest-numbered block is handed out first

    @staticmethod
    def bytes_per_block(num_layers: int, kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype) -> int:
        """What one block costs: keys and values of ``block_size`` tokens in every layer."""
        return 2 * num_layers * kv_heads * head_dim * block_size * dtype.itemsize

    @classmethod
    def blocks_in_budget(
        cls, budget_bytes: int, num_layers: int, kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
    ) -> int:
        """How many blocks fit in ``budget_bytes``; an error saying the smallest useful budget when none does."""
        per_block = cls.bytes_per_block(num_layers, kv_heads, head_dim, block_size, dtype)
        blocks = budget_bytes // per_block
        if blocks < 1:
            raise InputError(
                f"a KV cache budget of {budget_bytes} bytes holds no block of {block_size} tokens "
                f"({per_block} bytes each); give at least {per_block} bytes"
            )
        return int(blocks)

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold ``tokens`` token slots."""
        return math.ceil(tokens / self.block_size)

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def allocate(self, count: int) -> list[int]:
        """``count`` free blocks (the caller checked :attr:`free_blocks`)."""
        if count > len(self._free):
            raise RuntimeError(f"asked for {count} KV blocks with {len(self._free)} free")
        return [self._free.pop() for _ in range(count)]

    def release(self, blocks: Sequence[int]) -> None:
        """Give ``blocks`` back (a finished, cancelled or preempted sequence's whole table)."""
        self._free.extend(reversed(blocks))

    def slots(self, table: Sequence[int], start: int, end: int) -> torch.Tensor:
        """Storage slots of token positions ``start..end-1`` of a sequence with block table ``table``."""
        positions = torch.arange(start, end)
        blocks = torch.tensor(table, dtype=torch.long)[positions // self.block_size]
        return (blocks * self.block_size + positions % self.block_size).to(self.storage.device)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store keys and values ``[tokens, kv_heads, head_dim]`` in ``slots``."""
        self.storage[layer, 0].index_copy_(0, slots, k)
        self.storage[layer, 1].index_copy_(0, slots, v)

    def read(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[1, kv_heads, tokens, head_dim]`` of ``slots``, in order (a copy)."""
        keys = self.storage[layer, 0].index_select(0, slots).transpose(0, 1).unsqueeze(0)
        values = self.storage[layer, 1].index_select(0, slots).transpose(0, 1).unsqueeze(0)
        return keys, values
