"""Shared fixtures: small configs and models that run in milliseconds on the CPU."""

from __future__ import annotations

import os

import pytest
import torch

# Triton kernels run in Triton's CPU interpreter where no GPU is present; this must be set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from glm_engine.backends.registry import get_backend, op_table_for
from glm_engine.config import GLMConfig
from glm_engine.model.glm import GLMModel
from glm_engine.model.weights import GLMWeights, random_state_dict
from glm_engine.vocab import VocabLayout

# A small vocabulary with its own layout: shows that nothing depends on GLM-130B's ids.
SMALL_LAYOUT = VocabLayout(
    text_offset=10, mask=500, gmask=501, smask=502, eod=503, sop=504, eop=505, enc=506, dblock=507, eos=12, pad=0
)


# Three layers, four heads (TP degrees 1, 2, 4), a 512-token vocabulary: big enough to mean something, fast.
SMALL_CONFIG = GLMConfig(
    num_layers=3,
    hidden_size=64,
    num_attention_heads=4,
    inner_hidden_size=96,
    vocab_size=512,
    max_sequence_length=128,
    vocab_layout=SMALL_LAYOUT,
)


@pytest.fixture(scope="session")
def small_config() -> GLMConfig:
    return SMALL_CONFIG


def build_model(config: GLMConfig, dtype: torch.dtype = torch.float32, seed: int = 0) -> GLMModel:
    weights = GLMWeights.from_state_dict(random_state_dict(config, seed), config, dtype, "cpu")
    return GLMModel(config, weights, op_table_for(get_backend("cpu"), dtype))


@pytest.fixture(scope="session")
def small_model(small_config: GLMConfig) -> GLMModel:
    return build_model(small_config)
