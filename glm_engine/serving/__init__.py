"""The serving engine core: continuous batching over a paged KV cache (docs/serving.md).

``kv_blocks`` (the block pool and its budget), ``step_cache`` (one step's packed sequences attending over their
blocks), ``row_tiled`` (batch-invariant products), ``sampling`` (per-request sampling), ``sequence`` (a request's
state), ``scheduler`` (what runs each step) and ``core`` (``EngineCore``: add, step, abort).
"""
