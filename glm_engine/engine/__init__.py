"""The Python API's engine: ``load()`` any model source on any backend, then ``forward``, ``generate`` or ``chat``."""

from glm_engine.engine.engine import Engine, forward_checked
from glm_engine.engine.load import load
from glm_engine.engine.source import DEFAULT_MODEL

__all__ = ["DEFAULT_MODEL", "Engine", "forward_checked", "load"]
