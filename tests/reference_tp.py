"""An independent transcription of the reference's tools/convert_tp.py split/merge
(docs/glm-semantics.md#re-sharding-as-convert_tp-does), used to write test checkpoints in the reference's own layout and
to check our re-sharding against it."""

from __future__ import annotations

import torch

REPLICATED_NAMES = (
    "input_layernorm.weight",
    "input_layernorm.bias",
    "post_attention_layernorm.weight",
    "post_attention_layernorm.bias",
    "attention.dense.bias",
    "mlp.dense_4h_to_h.bias",
    "attention.rotary_emb.inv_freq",
    "final_layernorm.weight",
    "final_layernorm.bias",
)


def reference_convert(key: str, sources: list[torch.Tensor], rank: int, target_tp: int) -> torch.Tensor:
    """convert_tp.py's merge/split (docs/glm-semantics.md#re-sharding-as-convert_tp-does), for target dividing or
    divided by the source TP."""
    name = key.split(".", 3)[-1] if key.startswith("transformer.layers.") else key.removeprefix("transformer.")
    if name in REPLICATED_NAMES:
        return sources[0].clone()
    dim = 1 if name in ("attention.dense.weight", "mlp.dense_4h_to_h.weight") else 0
    glu = name.startswith("mlp.dense_h_to_4h")
    original = len(sources)
    if target_tp <= original:
        k = original // target_tp
        parts = sources[rank * k : (rank + 1) * k]
        if glu:
            return torch.cat([p.chunk(2)[0] for p in parts] + [p.chunk(2)[1] for p in parts])
        return torch.cat(parts, dim)
    n = target_tp // original
    src, off = sources[rank // n], rank % n
    if glu:
        c = src.chunk(2 * n)
        return torch.cat([c[off], c[n + off]])
    return src.chunk(n, dim)[off].clone()


def reference_shards(state_dict: dict[str, torch.Tensor], tp: int) -> list[dict[str, torch.Tensor]]:
    """A TP=1 state dict split to ``tp`` ranks the way convert_tp.py does it."""
    return [{k: reference_convert(k, [v], rank, tp) for k, v in state_dict.items()} for rank in range(tp)]
