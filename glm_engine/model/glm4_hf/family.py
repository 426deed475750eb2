"""GLM-4 in transformers' native layout as a family: ``GlmForCausalLM`` (``THUDM/glm-4-9b-chat-hf``) and
``Glm4ForCausalLM`` (``THUDM/GLM-4-9B-0414``, ``GLM-4-32B-0414``).

Source: transformers' ``models/glm`` and ``models/glm4`` (4.46+/4.51+, 5.x); what they compute is in
``docs/families.md#glm-4-native``. The graph is the shared causal one (``model/causal_glm/``); this folder holds the
names, the q/k/v fusion and how a folder is recognised.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from glm_engine.checkpoint.hf import CONFIG_FILE_NAME, model_type
from glm_engine.model.causal_glm.family import GLM4_INVALID_SCORE_ID, CausalGLMFamily
from glm_engine.model.family import TransformersBaseline
from glm_engine.model.glm4_hf.config import CONFORMANCE_CONFIG, GLM_HF_PRESETS, MODEL_TYPES, GlmHFConfig
from glm_engine.model.glm4_hf.weights import release_spec
from glm_engine.model.hf_release import ReleaseSpec

# transformers runs these natively: no code in the folder, only its config's architecture.
TRANSFORMERS_BASELINE = TransformersBaseline(
    code_files=(),
    auto_map={},
    install_hint="pip install 'transformers>=4.51' (GlmForCausalLM from 4.46, Glm4ForCausalLM from 4.51)",
)
TOKENIZER_RELEASE = "hf"  # tokenizer.json + tokenizer_config.json's chat template


class GlmHFFamily(CausalGLMFamily):
    name = "glm4-hf"
    title = "GLM-4 (transformers' Glm/Glm4ForCausalLM)"
    config_type = GlmHFConfig
    transformers_baseline = TRANSFORMERS_BASELINE

    def invalid_score_id(self, config: GlmHFConfig) -> int:
        return GLM4_INVALID_SCORE_ID  # GLM-4's remote code's; transformers' native generate has no such guard

    def chat_name(self, config: GlmHFConfig) -> str:
        return "GLM-4"

    def conformance_config(self) -> GlmHFConfig:
        return CONFORMANCE_CONFIG

    def presets(self) -> Mapping[str, GlmHFConfig]:
        return GLM_HF_PRESETS

    def recognises(self, folder: Path) -> bool:
        return model_type(folder) in MODEL_TYPES

    def config_from_folder(self, folder: Path) -> GlmHFConfig:
        return GlmHFConfig.from_json_file(folder / CONFIG_FILE_NAME)

    def release_spec(self, config: GlmHFConfig) -> ReleaseSpec:
        return release_spec(config)

    def tokenizer_release(self, config: GlmHFConfig) -> str:
        return TOKENIZER_RELEASE

    def tiny_tokenizer(self, config: GlmHFConfig) -> Path:
        from glm_engine.tokenizer.chat_loading import TINY_GLM4_HF_TOKENIZER

        return TINY_GLM4_HF_TOKENIZER
