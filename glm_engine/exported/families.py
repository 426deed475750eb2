"""Where the exported format meets the model families: a model config to the ``model`` section of
``genai_config.json`` and back, each family describing its own section (``Family.exported_section``). The section's
``type`` is the family's name (``glm``, ``chatglm``, ``chatglm2``, ``glm4-hf``); folders written before families had
names are GLM-130B's. The number of key/value heads, which shapes the KV cache, is also the family's to say.
"""

from __future__ import annotations

from typing import Any

from glm_engine.model.registry import family_named, family_of

DEFAULT_TYPE = "glm"  # a section without a type: the first exports were all GLM-130B


def model_section(config: Any) -> dict[str, Any]:
    """The model-specific part of ``genai_config.json``: type, config (in the family's own names), special tokens and
    the shape of ``position_ids`` (``position_ids_shape``, which the caller moves into the decoder's shapes)."""
    family = family_of(config)
    return {"type": family.name, **family.exported_section(config)}


def kv_heads(config: Any) -> int:
    """Key/value heads of the graph's cache: the family's key/value groups (grouped-query attention), else one per
    query head. An export is one rank, so every group is there."""
    return family_of(config).parts(config).kv_heads or config.num_attention_heads


def config_from_section(model: dict[str, Any], source: str) -> Any:
    """The model config a ``model`` section describes (``source``: the file, for error messages)."""
    return family_named(str(model.get("type", DEFAULT_TYPE))).config_from_exported(model, source)
