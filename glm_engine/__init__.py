"""glm-engine: one GLM graph for every GLM family on many accelerators, with the reference's exact semantics."""

from glm_engine.engine import Engine, load
from glm_engine.engine.deprecated import ChatGLMEngine, load_chatglm
from glm_engine.errors import GlmEngineError
from glm_engine.generation.blank_filling import Completion
from glm_engine.model.glm130b.config import GLMConfig, preset

__version__ = "0.1.0"

__all__ = [
    "ChatGLMEngine",
    "Completion",
    "Engine",
    "GLMConfig",
    "GlmEngineError",
    "__version__",
    "load",
    "load_chatglm",
    "preset",
]
