"""ChatGLM2-6B, ChatGLM3-6B and GLM-4-9B in THUDM's remote-code layout as a family.

Sources: the public reference code of ``THUDM/chatglm2-6b`` (and ``-int4``), ``THUDM/chatglm3-6b`` and
``THUDM/glm-4-9b-chat`` (``modeling_chatglm.py``, ``tokenization_chatglm.py``); what they compute, key by key, is in
``docs/families.md``. The graph is the shared causal one (``model/causal_glm/``); this folder holds the names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from glm_engine.checkpoint.hf import CONFIG_FILE_NAME
from glm_engine.errors import ConfigError
from glm_engine.model.causal_glm.family import GLM4_INVALID_SCORE_ID, INVALID_SCORE_ID, CausalGLMFamily
from glm_engine.model.chatglm2.config import (
    CHATGLM2_PRESETS,
    CONFORMANCE_CONFIG,
    MODEL_TYPE,
    ChatGLM2Config,
    is_v2_config,
)
from glm_engine.model.chatglm2.weights import release_spec
from glm_engine.model.config_checks import read_json_object
from glm_engine.model.family import TransformersBaseline
from glm_engine.model.hf_release import ReleaseSpec

CHAT_NAMES = {"chatglm2": "ChatGLM2-6B", "chatglm3": "ChatGLM3-6B", "glm4": "GLM-4"}
# InvalidScoreLogitsProcessor's forced id: 5 in ChatGLM2/3's code, 198 in GLM-4's.
INVALID_SCORE_TOKENS = {"chatglm2": INVALID_SCORE_ID, "chatglm3": INVALID_SCORE_ID, "glm4": GLM4_INVALID_SCORE_ID}
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
        except ConfigError:  # unreadable: some other family's (or no family's) problem
            return False
        return data.get("model_type") == MODEL_TYPE and is_v2_config(data)

    def config_from_folder(self, folder: Path) -> ChatGLM2Config:
        return ChatGLM2Config.from_folder(folder)

    def release_spec(self, config: ChatGLM2Config) -> ReleaseSpec:
        return release_spec(config)

    def tokenizer_release(self, config: ChatGLM2Config) -> str:
        return config.release

    def tiny_tokenizer(self, config: ChatGLM2Config) -> Path:
        from glm_engine.tokenizer.chat_loading import TINY_GLM4_TOKENIZER, TINY_SENTENCEPIECE_MODEL

        return TINY_GLM4_TOKENIZER if config.release == "glm4" else TINY_SENTENCEPIECE_MODEL
