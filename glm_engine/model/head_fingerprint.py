"""A wrong ``num_attention_heads`` where the head size is derived (``hidden_size / heads``: GLM-130B, ChatGLM-6B)
keeps every weight's shape, so the model loads and generates garbage. Three fingerprints catch it: the rotary
``inv_freq`` buffers such checkpoints store (their length follows the head size), the head count ``convert`` writes
into a native checkpoint's metadata, and the published shapes of the released models
(docs/checkpoints.md#what-loading-checks)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from glm_engine.errors import ConfigError

HEADS_METADATA_KEY = "num_attention_heads"  # in a native checkpoint's safetensors/index metadata


@dataclass(frozen=True)
class HeadFingerprint:
    """How a family's checkpoints reveal the head size: ``inv_freq`` keys ending in ``suffix`` hold
    ``head_dim // per_head`` values; ``releases`` maps a released model's (hidden size, layers) to (name, heads)."""

    suffix: str
    per_head: int
    releases: Mapping[tuple[int, int], tuple[str, int]]


def check_head_count(
    fingerprint: HeadFingerprint, entries: Mapping[str, Any], hidden: int, layers: int, heads: int, source: str
) -> None:
    """A ConfigError when ``heads`` contradicts the stored rotary buffers or the release of these shapes."""
    head_dim = hidden // heads
    for key, info in entries.items():
        if not key.endswith(fingerprint.suffix) or len(info.shape) != 1:
            continue
        stored = info.shape[0] * fingerprint.per_head
        if stored != head_dim and stored and hidden % stored == 0:
            raise ConfigError(
                f"{source}: num_attention_heads {heads} makes heads of {head_dim} dims, but the checkpoint's rotary "
                f"buffer {key} ({info.shape[0]} values) belongs to heads of {stored} dims, i.e. {hidden // stored} "
                "heads; fix num_attention_heads in config.json"
            )
    release = fingerprint.releases.get((hidden, layers))
    if release is not None and release[1] != heads:
        name, expected = release
        raise ConfigError(
            f"{source}: hidden size {hidden} with {layers} layers is {name}, which has {expected} attention heads, "
            f"but the config says {heads}; fix num_attention_heads in config.json"
        )


def check_stored_head_count(metadata: Mapping[str, str], heads: int, source: str) -> None:
    """A ConfigError when the head count ``convert`` stored with the weights differs from the config's."""
    stored = metadata.get(HEADS_METADATA_KEY)
    if stored is not None and stored.isdigit() and int(stored) != heads:
        raise ConfigError(
            f"{source}: the config says num_attention_heads {heads}, but these weights were converted for "
            f"{stored} heads (recorded in their metadata); fix num_attention_heads in config.json or --config"
        )
