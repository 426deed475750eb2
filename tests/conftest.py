"""Shared fixtures: small configs and models that run in milliseconds on the CPU."""

from __future__ import annotations

import os

import pytest
import torch

# Triton kernels run in Triton's CPU interpreter where no GPU is present; this must be set before triton is imported.
# (A ROCm build of torch answers torch.cuda too: its GPUs are "cuda" devices.)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# No timed kernel trials in tests: the CPU linears take their fixed defaults (docs/cpu-kernels.md); the tests of the
# trial itself use their own chooser with a fake clock. Set the variable to a kernel's name to run the suite on it.
os.environ.setdefault("GLM_ENGINE_CPU_KERNELS", "off")

from glm_engine.backends.registry import get_backend, op_table_for
from glm_engine.model.glm130b.config import CONFORMANCE_CONFIG, GLMConfig
from glm_engine.model.glm130b.weights import random_state_dict
from glm_engine.model.graph import DecoderModel

# The conformance suite's tiny GLM (three layers, four heads for TP 1/2/4, a 512-token vocabulary with its own
# layout, which shows that nothing depends on GLM-130B's ids), with room for longer test prompts.
SMALL_LAYOUT = CONFORMANCE_CONFIG.vocab_layout
SMALL_CONFIG = CONFORMANCE_CONFIG.with_overrides(max_sequence_length=128)


def kernel_device_for(gpu_present: bool) -> torch.device:
    """Where tests put the tensors a Triton kernel reads: a compiled kernel reads device memory only (given a CPU
    tensor it fails with "Pointer argument cannot be accessed from Triton"), while the interpreter that runs the
    kernels without a GPU reads host memory."""
    return torch.device("cuda", 0) if gpu_present else torch.device("cpu")


KERNEL_DEVICE = kernel_device_for(torch.cuda.is_available())


@pytest.fixture(scope="session")
def kernel_device() -> torch.device:
    """The device of the tensors a test hands a Triton kernel, or an op table that launches one (every such test
    takes this fixture; tests/test_suite_devices.py checks that)."""
    return KERNEL_DEVICE


@pytest.fixture(scope="session")
def small_config() -> GLMConfig:
    return SMALL_CONFIG


def build_model(config: GLMConfig, dtype: torch.dtype = torch.float32, seed: int = 0) -> DecoderModel:
    return DecoderModel.from_state_dict(
        config, random_state_dict(config, seed), op_table_for(get_backend("cpu"), dtype)
    )


@pytest.fixture(scope="session")
def small_model(small_config: GLMConfig) -> DecoderModel:
    return build_model(small_config)
