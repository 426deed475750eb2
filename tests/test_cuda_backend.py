"""The cuda backend against the CPU reference; runs where torch sees a CUDA device and skips elsewhere."""

import pytest
import torch

import glm_engine
from glm_engine.backends.registry import get_backend, op_table_for
from glm_engine.generation.masks import generation_blocked, generation_positions
from glm_engine.model.glm130b.weights import random_state_dict
from glm_engine.model.graph import DecoderModel
from glm_engine.ops.torch_ops import TorchOps

pytestmark = pytest.mark.skipif(
    not get_backend("cuda").availability().ok,
    reason=f"needs the cuda backend: {get_backend('cuda').availability().reason}",
)

# NMSE of a device's logits against the float64 CPU computation of the same weights (random tiny model), bounded by
# the conformance suite's model:logits row (tests/bounds.py).


def logits_nmse_bound(dtype: torch.dtype) -> float:
    from bounds import max_nmse  # imported here: the import block above is the backend move's

    return max_nmse("model:logits", dtype)


def inputs(context=12, total=16):
    tokens = torch.randint(20, 400, (2, total), generator=torch.Generator().manual_seed(0))
    positions = generation_positions(context, total, 3, False).expand(2, -1)
    blocked = generation_blocked(context, total)[None, None]
    return tokens, positions, blocked


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_logits_match_the_float64_cpu_reference(small_config, dtype):
    cuda = get_backend("cuda")
    if not cuda.supports(glm_engine.ops.interface.Op.LINEAR, dtype):
        pytest.skip(f"this GPU has no {dtype}")
    state_dict = random_state_dict(small_config, seed=2)
    exact = DecoderModel.from_state_dict(small_config, state_dict, TorchOps(torch.device("cpu"), torch.float64))
    device = cuda.device()
    model = DecoderModel.from_state_dict(small_config, state_dict, op_table_for(cuda, dtype))
    tokens, positions, blocked = inputs()
    reference = exact.forward(tokens, positions, blocked)
    got = model.forward(tokens.to(device), positions.to(device), blocked.to(device)).cpu().double()
    assert torch.isfinite(got).all()
    assert float(((got - reference) ** 2).sum() / (reference**2).sum()) <= logits_nmse_bound(dtype)


def test_cuda_cached_decode_equals_recomputation(small_config):
    cuda = get_backend("cuda")
    device = cuda.device()
    model = DecoderModel.from_state_dict(
        small_config, random_state_dict(small_config, 3), op_table_for(cuda, torch.float32)
    )
    tokens, positions, blocked = (t.to(device) for t in inputs())
    full = model.forward(tokens, positions, blocked)
    cache = model.new_cache(2, 16)
    parts = [model.forward(tokens[:, :12], positions[:, :12], blocked[..., :12, :12], cache)]
    for col in range(12, 16):
        parts.append(
            model.forward(
                tokens[:, col : col + 1], positions[:, col : col + 1], blocked[..., col : col + 1, : col + 1], cache
            )
        )
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)


def test_greedy_generation_on_cuda_equals_the_cpu(small_config):
    cpu = glm_engine.load(backend="cpu", dtype="fp32")
    cuda = glm_engine.load(backend="cuda", dtype="fp32")
    prompts = ["The capital of France is [MASK].", "天空是[MASK]色的", "Once upon a time"]
    options = dict(out_seq_length=48, top_k=1, top_p=0.0)
    assert [c.token_ids for c in cuda.generate(prompts, **options)] == [
        c.token_ids for c in cpu.generate(prompts, **options)
    ]
