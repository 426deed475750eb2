"""glm-engine: one GLM graph (GLM-130B and family) on many accelerators, with the reference's exact semantics."""

from glm_engine.chatglm_engine import ChatGLMEngine, load_chatglm
from glm_engine.config import GLMConfig, preset
from glm_engine.engine import Engine, load
from glm_engine.errors import GlmEngineError
from glm_engine.generation.blank_filling import Completion

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
