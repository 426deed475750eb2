"""The device-agnostic GLM graph: weights, rotary table, KV cache and the forward pass."""
