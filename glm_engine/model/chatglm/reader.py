"""ChatGLM-6B's weights as a :class:`~glm_engine.model.weights.WeightReader`: its Hugging Face release (INT4/INT8
releases included) read by the shared :class:`~glm_engine.model.hf_reader.ReleaseReader` under ChatGLM's spec, with the
head count checked against the release (``head_fingerprint``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from glm_engine.checkpoint.hf import HFCheckpoint
from glm_engine.model.chatglm.config import ChatGLMConfig
from glm_engine.model.chatglm.weights import HEAD_FINGERPRINT, release_spec
from glm_engine.model.head_fingerprint import check_head_count
from glm_engine.model.hf_reader import ReleaseReader


class ChatGLMReader(ReleaseReader):
    """One rank's ChatGLM tensors from a Hugging Face folder (``checkpoint``) or an in-memory ``state_dict``."""

    def __init__(
        self,
        config: ChatGLMConfig,
        description: str,
        checkpoint: HFCheckpoint | None = None,
        state_dict: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(release_spec(config), description, checkpoint, state_dict, config)
        entries = checkpoint.entries if checkpoint is not None else state_dict or {}
        source = str(checkpoint.path) if checkpoint is not None else description
        h, layers, heads = config.hidden_size, config.num_layers, config.num_attention_heads
        check_head_count(HEAD_FINGERPRINT, entries, h, layers, heads, source)
