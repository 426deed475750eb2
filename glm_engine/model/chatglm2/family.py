"""ChatGLM2-6B, ChatGLM3-6B and GLM-4-9B in THUDM's remote-code layout as a family.

Sources: the public reference code of ``THUDM/chatglm2-6b`` (and ``-int4``), ``THUDM/chatglm3-6b`` and
``THUDM/glm-4-9b-chat`` (``modeling_chatglm.py``, ``tokenization_chatglm.py``); what they compute, key by key, is in
``docs/families.md``. The graph is the shared causal one (``model/causal_glm/``); this folder holds the names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from glm_engine.checkpoint.hf import CONFIG_FILE_NAME, open_hf_checkpoint
from glm_engine.errors import CheckpointError, InputError, TokenizerError
from glm_engine.model.causal_glm.family import CausalGLMFamily
from glm_engine.model.chatglm2.config import (
    CHATGLM2_PRESETS,
    CONFORMANCE_CONFIG,
    MODEL_TYPE,
    ChatGLM2Config,
    is_v2_config,
)
from glm_engine.model.chatglm2.weights import random_state_dict, release_spec, weight_layout
from glm_engine.model.config_checks import read_json_object
from glm_engine.model.family import TransformersBaseline
from glm_engine.model.hf_reader import ReleaseReader
from glm_engine.model.weights import WeightLayout, WeightReader
from glm_engine.tokenizer.chat_tokenizer import ChatTokenizer

CHAT_NAMES = {"chatglm2": "ChatGLM2-6B", "chatglm3": "ChatGLM3-6B", "glm4": "GLM-4"}
# InvalidScoreLogitsProcessor's forced id: 5 in ChatGLM2/3's code, 198 in GLM-4's.
INVALID_SCORE_TOKENS = {"chatglm2": 5, "chatglm3": 5, "glm4": 198}
TRANSFORMERS_BASELINE = TransformersBaseline(
    code_files=("modeling_chatglm.py", "configuration_chatglm.py"),
    auto_map={
        "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    },
    install_hint="pip install 'transformers>=4.44,<4.49' (GLM-4's remote code; ChatGLM2/3's runs on 4.40)",
)


class ChatGLM2Family(CausalGLMFamily):
    name = "chatglm2"
    title = "ChatGLM2/ChatGLM3/GLM-4 (remote code)"
    config_type = ChatGLM2Config
    transformers_baseline = TRANSFORMERS_BASELINE

    def invalid_score_id(self, config: ChatGLM2Config) -> int:
        return INVALID_SCORE_TOKENS[config.release]

    def chat_name(self, config: ChatGLM2Config) -> str:
        return CHAT_NAMES[config.release]

    def weight_layout(self, config: ChatGLM2Config) -> WeightLayout:
        return weight_layout(config)

    def conformance_config(self) -> ChatGLM2Config:
        return CONFORMANCE_CONFIG

    def presets(self) -> Mapping[str, ChatGLM2Config]:
        return CHATGLM2_PRESETS

    def recognises(self, folder: Path) -> bool:
        path = folder / CONFIG_FILE_NAME
        if not path.is_file():
            return False
        try:
            data = read_json_object(path)
        except Exception:
            return False
        return data.get("model_type") == MODEL_TYPE and is_v2_config(data)

    def open_checkpoint(self, folder: Path, config: ChatGLM2Config | None) -> WeightReader:
        if config is not None:
            raise InputError("a config override goes with a preset (random weights), not a checkpoint folder")
        if not (folder / CONFIG_FILE_NAME).is_file():
            raise CheckpointError(f"{folder} has no {CONFIG_FILE_NAME}; a ChatGLM2/3 or GLM-4 folder needs one")
        config = ChatGLM2Config.from_folder(folder)
        checkpoint = open_hf_checkpoint(folder)
        description = f"{config.release} {checkpoint.describe()}"
        return ReleaseReader(release_spec(config), description, checkpoint=checkpoint, config=config)

    def state_dict_reader(self, state_dict: Mapping[str, Any], config: ChatGLM2Config, source: str) -> WeightReader:
        return ReleaseReader(release_spec(config), source, state_dict=state_dict, config=config)

    def random_state_dict(
        self, config: ChatGLM2Config, seed: int, dtype: torch.dtype = torch.float32
    ) -> dict[str, Any]:
        return random_state_dict(config, seed, dtype)

    def load_tokenizer(
        self, config: ChatGLM2Config, path: str | Path | None, folder: Path | None, random: bool
    ) -> ChatTokenizer:
        """The release's tokenizer: ``path`` (a file or its folder), else the checkpoint folder's own; a random preset
        falls back to the packaged tiny tokenizer of its release (SentencePiece for ChatGLM2/3, tiktoken for
        GLM-4)."""
        from glm_engine.tokenizer.chat_loading import TINY_GLM4_TOKENIZER, TINY_SENTENCEPIECE_MODEL, load_chat_tokenizer

        if path is None and folder is None:
            if not random:
                raise TokenizerError("no tokenizer: pass --tokenizer PATH (glm-engine never downloads one)")
            path = TINY_GLM4_TOKENIZER if config.release == "glm4" else TINY_SENTENCEPIECE_MODEL
        return load_chat_tokenizer(Path(path) if path is not None else folder, config.release)
