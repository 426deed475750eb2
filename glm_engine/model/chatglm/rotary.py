"""ChatGLM-6B's rotary table (``docs/glm-semantics.md``): one table for each of the two rotated halves of a head."""

from __future__ import annotations

import torch

# ``SelfAttention`` builds ``RotaryEmbedding(..., base=10000)``: not a config field in the reference.
ROTARY_BASE = 10000.0


def chatglm_rotary_table(
    rotary_dim: int,
    num_positions: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    base: float = ROTARY_BASE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ChatGLM-6B's table for one rotary half: ``(cos, sin)``, each ``[num_positions, rotary_dim]`` in ``dtype``.

    The reference's ``RotaryEmbedding`` rounds ``inv_freq`` to fp16 when it is built and keeps it as a buffer, so a
    model moved to another dtype (``.float()``, ``.bfloat16()``) converts those fp16 values; positions are an
    ``arange`` in that same dtype and the product, ``cos`` and ``sin`` are computed there too. So fp16 is the
    ``sat-0.2`` recipe, fp32 differs from ``sat-0.4`` by the fp16-rounded frequencies, and bf16 positions above 256
    round as bf16 rounds them, all as in the reference.
    """
    inv_freq = (1.0 / base ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)).half().to(dtype)
    positions = torch.arange(num_positions, dtype=dtype)
    freqs = torch.einsum("i,j->ij", positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(device), emb.sin().to(device)
