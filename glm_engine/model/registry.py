"""The families glm-engine runs, and finding the one a config, a name or a checkpoint folder belongs to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glm_engine.errors import ConfigError
from glm_engine.model.chatglm.family import ChatGLMFamily
from glm_engine.model.chatglm2.family import ChatGLM2Family
from glm_engine.model.family import Family
from glm_engine.model.glm4_hf.family import GlmHFFamily
from glm_engine.model.glm130b.family import GLM130BFamily

# In the order folders are recognised; a new family is one line here (docs/families.md).
FAMILIES: tuple[Family, ...] = (GLM130BFamily(), ChatGLMFamily(), ChatGLM2Family(), GlmHFFamily())


def family_of(config: Any) -> Family:
    """The family whose config class ``config`` is."""
    for family in FAMILIES:
        if isinstance(config, family.config_type):
            return family
    raise ConfigError(f"{type(config).__name__} is no family's config; known: {', '.join(f.title for f in FAMILIES)}")


def family_named(name: str) -> Family:
    """The family called ``name`` (``Family.name``, as exported folders record it)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ConfigError(f"unknown model family {name!r}; known: {', '.join(f.name for f in FAMILIES)}")


def family_of_folder(folder: Path) -> Family | None:
    """The family that recognises ``folder`` as its checkpoint, from metadata alone; None when none does."""
    return next((family for family in FAMILIES if family.recognises(folder)), None)


def preset_family(name: str) -> tuple[Family, Any] | None:
    """``(family, config)`` of the preset called ``name``; None when no family has one."""
    for family in FAMILIES:
        if name in family.presets():
            return family, family.presets()[name]
    return None


def preset_names() -> list[str]:
    return [name for family in FAMILIES for name in family.presets()]
