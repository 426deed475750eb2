"""GLM-4 in transformers' native layout as a family: ``GlmForCausalLM`` (``THUDM/glm-4-9b-chat-hf``) and
``Glm4ForCausalLM`` (``THUDM/GLM-4-9B-0414``, ``GLM-4-32B-0414``).

Source: transformers' ``models/glm`` and ``models/glm4`` (4.46+/4.51+, 5.x); what they compute is in
``docs/families.md#glm-4-native``. The graph is the shared causal one (``model/causal_glm/``); this folder holds the
names, the q/k/v fusion and how a folder is recognised.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from glm_engine.checkpoint.hf import CONFIG_FILE_NAME, model_type, open_hf_checkpoint
from glm_engine.errors import CheckpointError, InputError, TokenizerError
from glm_engine.model.causal_glm.family import CausalGLMFamily
from glm_engine.model.family import TransformersBaseline
from glm_engine.model.glm4_hf.config import CONFORMANCE_CONFIG, GLM_HF_PRESETS, MODEL_TYPES, GlmHFConfig
from glm_engine.model.glm4_hf.weights import random_state_dict, release_spec, weight_layout
from glm_engine.model.hf_reader import ReleaseReader
from glm_engine.model.weights import WeightLayout, WeightReader
from glm_engine.tokenizer.chat_tokenizer import ChatTokenizer

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
        return 198  # GLM-4's remote code forces this id; transformers' native generate has no such guard

    def chat_name(self, config: GlmHFConfig) -> str:
        return "GLM-4"

    def weight_layout(self, config: GlmHFConfig) -> WeightLayout:
        return weight_layout(config)

    def conformance_config(self) -> GlmHFConfig:
        return CONFORMANCE_CONFIG

    def presets(self) -> Mapping[str, GlmHFConfig]:
        return GLM_HF_PRESETS

    def recognises(self, folder: Path) -> bool:
        return model_type(folder) in MODEL_TYPES

    def open_checkpoint(self, folder: Path, config: GlmHFConfig | None) -> WeightReader:
        if config is not None:
            raise InputError("a config override goes with a preset (random weights), not a checkpoint folder")
        if not (folder / CONFIG_FILE_NAME).is_file():
            raise CheckpointError(f"{folder} has no {CONFIG_FILE_NAME}; a transformers GLM-4 folder needs one")
        config = GlmHFConfig.from_json_file(folder / CONFIG_FILE_NAME)
        checkpoint = open_hf_checkpoint(folder)
        description = f"{config.release} {checkpoint.describe()}"
        return ReleaseReader(release_spec(config), description, checkpoint=checkpoint, config=config)

    def state_dict_reader(self, state_dict: Mapping[str, Any], config: GlmHFConfig, source: str) -> WeightReader:
        return ReleaseReader(release_spec(config), source, state_dict=state_dict, config=config)

    def random_state_dict(self, config: GlmHFConfig, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
        return random_state_dict(config, seed, dtype)

    def load_tokenizer(
        self, config: GlmHFConfig, path: str | Path | None, folder: Path | None, random: bool
    ) -> ChatTokenizer:
        """``tokenizer.json`` with its ``tokenizer_config.json``: ``path``'s, else the checkpoint folder's; a random
        preset falls back to the packaged tiny native tokenizer."""
        from glm_engine.tokenizer.chat_loading import TINY_GLM4_HF_TOKENIZER, load_chat_tokenizer

        if path is None and folder is None:
            if not random:
                raise TokenizerError("no tokenizer: pass --tokenizer PATH (glm-engine never downloads one)")
            path = TINY_GLM4_HF_TOKENIZER
        return load_chat_tokenizer(Path(path) if path is not None else folder, TOKENIZER_RELEASE)
