"""GLM-130B's rotary cos/sin table, built with the recipe the config names (``docs/glm-semantics.md``).

The table is always built on the CPU and then moved, so every device starts from the same bits.
"""

from __future__ import annotations

import torch

from glm_engine.model.glm130b.config import GLMConfig


def rotary_table(
    config: GLMConfig, dtype: torch.dtype, device: torch.device | str = "cpu", num_positions: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``[num_positions, head_dim]`` in ``dtype``; frequency j covers dims j and j + d/2.

    In fp16 with the ``sat-0.2`` recipe, inverse frequencies, positions, their product and cos/sin are all fp16,
    as in the SwissArmyTransformer release GLM-130B was served with; otherwise they are computed in fp32 (fp64 for
    a float64 model) and cast.
    """
    n = num_positions or config.max_sequence_length
    d = config.head_dim
    exponents = torch.arange(0, d, 2).float() / d
    inv_freq = 1.0 / config.rotary_base**exponents  # computed in fp32, as the reference does
    if dtype == torch.float16 and config.rotary_recipe == "sat-0.2":
        inv_freq = inv_freq.half()
        positions = torch.arange(n, dtype=torch.float16)
        freqs = torch.einsum("i,j->ij", positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
    else:
        work = torch.float64 if dtype == torch.float64 else torch.float32
        positions = torch.arange(n, dtype=work)
        freqs = torch.outer(positions, inv_freq.to(work))
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    return cos.to(device), sin.to(device)
