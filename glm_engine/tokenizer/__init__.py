"""icetk-compatible GLM tokenizer on plain SentencePiece, and where its model file is found."""

from __future__ import annotations

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
    "GLMTokenizer",
    "builtin_tokenizer",
    "find_tokenizer_model",
    "icetk_cache_model_path",
    "load_tokenizer",
]
