"""The one place the exported format tells model families apart: a model config to the ``model`` section of
``genai_config.json`` (type, the config in the model's own names, special tokens, the shape of ``position_ids``) and
back. The family registry replaces this switch (each family describes its own section); until then GLM-130B is
``glm`` and ChatGLM-6B is ``chatglm``.
"""

from __future__ import annotations

from typing import Any

from glm_engine.config import GLMConfig
from glm_engine.model.chatglm_config import ChatGLMConfig

GLM_TYPE, CHATGLM_TYPE = "glm", "chatglm"  # the section's ``type``


def model_section(config: GLMConfig | ChatGLMConfig) -> dict[str, Any]:
    """The model-specific part of ``genai_config.json``: type, config (in the model's own names), special tokens and
    the shape of ``position_ids`` (``position_ids_shape``, which the caller moves into the decoder's shapes)."""
    if isinstance(config, ChatGLMConfig):
        return {
            "type": CHATGLM_TYPE,
            "config": config.to_hf_dict(),
            "num_image_tokens": config.num_image_tokens,  # tokenizer_config.json's: where text piece 0 sits
            "bos_token_id": config.bos_token_id,
            "eos_token_id": list(config.end_token_ids),
            "pad_token_id": config.pad_token_id,
            "special_tokens": {
                "mask": config.mask_token_id,
                "gmask": config.gmask_token_id,
                "sop": config.bos_token_id,
                "eop": config.eos_token_id,
                "pad": config.pad_token_id,
            },
            "position_ids_shape": ["batch_size", 2, "sequence_length"],
        }
    layout = config.vocab_layout
    return {
        "type": GLM_TYPE,
        "config": config.to_dict(),
        "bos_token_id": layout.sop,
        "eos_token_id": [layout.eos, layout.eop],
        "pad_token_id": layout.pad,
        "special_tokens": layout.to_dict(),
        "position_ids_shape": ["batch_size", "sequence_length"],
    }


def config_from_section(model: dict[str, Any], source: str) -> GLMConfig | ChatGLMConfig:
    """The model config a ``model`` section describes (``source``: the file, for error messages)."""
    if model.get("type") == CHATGLM_TYPE:
        return ChatGLMConfig.from_hf_dict(model["config"], source, model.get("num_image_tokens"))
    return GLMConfig.from_dict(model["config"], source=source)
