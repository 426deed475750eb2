"""The rotary tables of the causal GLMs, built with each release's recipe (``docs/families.md#rotary-tables``).

Frequency ``i`` of ``rotary_dims / 2`` is ``1 / base^(2i / rotary_dims)``; position ``p`` rotates the pair ``(2i,
2i+1)`` of each head's first ``rotary_dims`` dims by ``p * theta_i``. The table holds ``cat(freqs, freqs)`` per
position, the rotate-half op's layout (the graph turns the GPT-J pairs into halves around it).

* ``fp32`` (ChatGLM3, GLM-4, transformers' Glm/Glm4): frequencies, positions and products in fp32, cos/sin in fp32,
  then cast to the model's dtype.
* ``model-dtype`` (ChatGLM2): the reference computes frequencies, positions and their product in the dtype of its
  rotary buffer (the model's: fp16 after ``.half()``), so positions past 2048 and the angles are rounded to fp16 before
  cos/sin run in fp32; ChatGLM2-32k also divides the positions by its ``rope_ratio`` there.

Built on the CPU, then moved, so every device starts from the same bits.
"""

from __future__ import annotations

import torch

from glm_engine.model.causal_glm.config import ROTARY_IN_MODEL_DTYPE, CausalGLMConfig

BLOCK = 65536  # positions per block of the table build


def causal_rotary_table(
    config: CausalGLMConfig, dtype: torch.dtype, device: torch.device | str = "cpu", num_positions: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``[num_positions, rotary_dims]`` in ``dtype`` (default: the model's position range), built
    in blocks of positions so a million-position model (GLM-4-9B-chat-1m) never holds the fp32 angles at once."""
    n = num_positions or config.max_sequence_length
    dims = config.rotary_dims
    work = dtype if config.rotary_recipe == ROTARY_IN_MODEL_DTYPE else torch.float32
    if dtype == torch.float64:
        work = torch.float64
    theta = 1.0 / (config.rotary_base ** (torch.arange(0, dims, 2, dtype=work) / dims))
    cos = torch.empty(n, dims, dtype=dtype)
    sin = torch.empty(n, dims, dtype=dtype)
    for start in range(0, n, BLOCK):
        positions = torch.arange(start, min(n, start + BLOCK), dtype=work)
        if config.position_divisor != 1.0:
            positions = positions / config.position_divisor
        angles = torch.outer(positions, theta)
        angles = angles if work == torch.float64 else angles.float()
        emb = torch.cat((angles, angles), dim=-1)
        cos[start : start + len(positions)] = emb.cos().to(dtype)
        sin[start : start + len(positions)] = emb.sin().to(dtype)
    return cos.to(device), sin.to(device)
