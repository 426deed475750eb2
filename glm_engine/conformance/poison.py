"""Output poisoning: make memory an op did not write read as NaN, so an unwritten element fails its case.

The ops are functional (they return new tensors), so the poison goes into the allocator, two ways:

* torch's own switch (``torch.utils.deterministic.fill_uninitialized_memory`` with deterministic algorithms on, in
  warn-only mode so no op is refused): every ``torch.empty``-family allocation, on any device whose torch build
  honours it (CPU and CUDA/HIP in upstream torch), starts as NaN (integers as their maximum). This is the whole of it on
  the CPU, which has no caching allocator to pre-fill.
* On devices with a caching allocator (``cuda``, ``npu``): before each case, blocks in both the small and the large
  pool are allocated, filled with NaN and freed, so a kernel that allocates outside torch's ``empty`` (a vendor
  library's own output allocation through the caching allocator) still gets recycled, poisoned memory.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Block sizes for pre-poisoning a caching allocator: blocks up to 1 MiB come from the small pool (2 MiB segments),
# bigger ones from the large pool (the CUDA caching allocator's split; torch_npu's mirrors it).
SMALL_POOL_BLOCK_BYTES = 1 << 20
SMALL_POOL_BLOCKS = 8
LARGE_POOL_BYTES = 256 << 20
CACHING_DEVICE_TYPES = ("cuda", "npu")


def prefill_caching_allocator(device: torch.device) -> None:
    """Leave NaN-filled free blocks in ``device``'s caching allocator (no-op on devices without one)."""
    if device.type not in CACHING_DEVICE_TYPES:
        return
    element = torch.finfo(torch.float32).bits // 8
    blocks = [torch.full((SMALL_POOL_BLOCK_BYTES // element,), float("nan"), device=device)]
    blocks += [torch.full_like(blocks[0], float("nan")) for _ in range(SMALL_POOL_BLOCKS - 1)]
    blocks.append(torch.full((LARGE_POOL_BYTES // element,), float("nan"), device=device))
    del blocks


@contextmanager
def poisoned_allocations(device: torch.device) -> Iterator[None]:
    """Within the block, fresh allocations on ``device`` hold NaN until written."""
    prefill_caching_allocator(device)
    was_enabled = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_filling = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warn-only mode reports nondeterministic kernels; not our concern here
            yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = was_filling
        torch.use_deterministic_algorithms(was_enabled, warn_only=was_warn_only)
