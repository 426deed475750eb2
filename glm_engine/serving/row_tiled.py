"""Batch-invariant products: every linear runs over fixed tiles of rows, so a row's result does not depend on how
many other rows share the step.

A BLAS picks its kernel (and so its summation order) by the number of rows: on the development CPU one fp32 row
through ``F.linear`` differs from the same row inside an 8-row product by up to 2e-4. At a fixed row count the result
of a row depends only on that row (measured, and checked by ``tests/test_serving_core.py`` on the CPU it runs on),
so the rows are cut into tiles of ``rows``, the last one zero-padded. A request's greedy output under load is then
bit-for-bit its output alone.
"""

from __future__ import annotations

from typing import Any

import torch

from glm_engine.ops.interface import OpTable, PackedLinear

DEFAULT_TILE_ROWS = 8


class RowTiledOps:
    """An op table whose ``linear`` runs in tiles of ``rows`` rows; every other op is the wrapped table's."""

    def __init__(self, ops: OpTable, rows: int = DEFAULT_TILE_ROWS) -> None:
        self._ops = ops
        self.rows = rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ops, name)

    def linear(self, x: torch.Tensor, weight: torch.Tensor | PackedLinear, bias: torch.Tensor | None) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        count = flat.shape[0]
        padded = -(-count // self.rows) * self.rows
        if padded != count:
            flat = torch.cat((flat, flat.new_zeros(padded - count, flat.shape[1])))
        tiles = [self._ops.linear(tile, weight, bias) for tile in flat.split(self.rows)]
        out = torch.cat(tiles)[:count]
        return out.reshape(*x.shape[:-1], out.shape[-1])
