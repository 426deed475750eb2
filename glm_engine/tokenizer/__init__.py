"""Tokenizers: GLM-130B's icetk-compatible one on plain SentencePiece (and where its model file is found), and the chat
tokenizers of ChatGLM2/3, GLM-4 and native GLM-4 folders behind one :class:`ChatTokenizer` interface."""

from __future__ import annotations

from glm_engine.tokenizer.chat_loading import (
    RELEASES,
    TINY_GLM4_HF_TOKENIZER,
    TINY_GLM4_TOKENIZER,
    TINY_SENTENCEPIECE_MODEL,
    detect_release,
    load_chat_tokenizer,
)
from glm_engine.tokenizer.chat_tokenizer import ChatReply, ChatTokenizer, ToolCall
from glm_engine.tokenizer.ice import (
    BUILTIN_TOKENIZER_PATH,
    ICETK_CACHE_DIR,
    MODEL_FILENAME,
    GLMTokenizer,
    builtin_tokenizer,
    find_tokenizer_model,
    icetk_cache_model_path,
    load_tokenizer,
)

__all__ = [
    "BUILTIN_TOKENIZER_PATH",
    "ICETK_CACHE_DIR",
    "MODEL_FILENAME",
    "RELEASES",
    "TINY_GLM4_HF_TOKENIZER",
    "TINY_GLM4_TOKENIZER",
    "TINY_SENTENCEPIECE_MODEL",
    "ChatReply",
    "ChatTokenizer",
    "GLMTokenizer",
    "ToolCall",
    "builtin_tokenizer",
    "detect_release",
    "find_tokenizer_model",
    "icetk_cache_model_path",
    "load_chat_tokenizer",
    "load_tokenizer",
]
