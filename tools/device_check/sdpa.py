"""Step 2: each SDPA backend alone against float64 with GLM's prefix mask.

GLM's mask is bidirectional over the prompt and causal after it (``generation.masks.generation_blocked``), a bool
mask SDPA must honour. Each backend torch has (math, memory-efficient, flash, cuDNN) is forced alone with
``torch.nn.attention.sdpa_kernel`` at s = 300, 320 (tile-ragged and tile-aligned) and 1088 in fp16 and bf16, and
compared with ``reference_attention`` in float64 by the conformance suite's NMSE and its ``attention:prefill`` bound;
"no kernel" is a backend refusing the arguments (flash takes no arbitrary mask), not a failure. The last row per
shape is the engine's own SDPA path (``backends/torch_cuda/attention.run_sdpa`` on the kernels the cuda policy
allows: memory-efficient, cuDNN only with ``GLM_ENGINE_SDPA_CUDNN=1``), and its result names the kernel that ran or
the fallback it took.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from tools.device_check.common import FAILED, PASSED, LiveTable, NoDevice, arguments, skipped, summary, target

LENGTHS = (300, 320, 1088)
HEADS, HEAD_DIM = 8, 128  # GLM-130B's head width; fewer heads than its 96 (the kernels tile per head)
PROMPT_SHARE = 0.75  # the prompt (bidirectional) part of each sequence
BACKEND_NAMES = ("MATH", "EFFICIENT_ATTENTION", "FLASH_ATTENTION", "CUDNN_ATTENTION")


def glm_inputs(s: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    from glm_engine.generation.masks import generation_blocked

    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, HEADS, s, HEAD_DIM, generator=gen) for _ in range(3))
    blocked = generation_blocked(int(s * PROMPT_SHARE), s)[None, None]
    return [t.to(device, dtype) for t in (q, k, v)], blocked.to(device)


def backend_calls() -> list[tuple[str, Callable]]:
    """(name, attention(q, k, v, blocked)) for each SDPA backend this torch has, then the engine's path."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from glm_engine.backends.torch_cuda.attention import run_sdpa, sdpa_kernels

    def forced(backend):
        def call(q, k, v, blocked):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=~blocked, scale=1 / math.sqrt(q.shape[-1]))

        return call

    def engine(q, k, v, blocked):
        run = run_sdpa(q, k, v, blocked, 1.0, sdpa_kernels())
        engine.ran = f"fallback to the {run.path.value}: {run.fallback}" if run.fallback else run.detail
        return run.out

    calls = [(name.lower(), forced(getattr(SDPBackend, name))) for name in BACKEND_NAMES if hasattr(SDPBackend, name)]
    return [*calls, ("engine run_sdpa", engine)]


def check(inputs, expected: torch.Tensor, s: int, dtype: torch.dtype, name: str, call: Callable) -> list[object]:
    """One row: ``call`` on ``inputs`` against the float64 ``expected``."""
    from glm_engine.conformance.oracle import nmse
    from glm_engine.conformance.thresholds import threshold_for

    (q, k, v), blocked = inputs
    bound = threshold_for("attention:prefill", dtype).max_nmse
    try:
        got = call(q, k, v, blocked).cpu()
    except RuntimeError as exc:  # "No available kernel" and the like: the backend refuses these arguments
        if name.startswith("engine"):  # the engine falls back on those itself: anything it raises is a failure
            return [s, str(dtype)[6:], name, "-", bound, "-", f"FAIL (raised {str(exc).strip().splitlines()[0][:60]})"]
        return [s, str(dtype)[6:], name, "-", bound, "-", "no kernel: " + str(exc).strip().splitlines()[0][:60]]
    error = nmse([got], [expected])
    worst = float((got.double() - expected).abs().max())
    verdict = "NaN" if math.isnan(error) else ("ok" if error <= bound else "FAIL")
    ran = getattr(call, "ran", "")  # the engine's row: which kernel ran, or the fallback
    return [s, str(dtype)[6:], name, error, bound, worst, verdict + (f" ({ran[:60]})" if ran else "")]


def main(argv: Sequence[str] | None = None) -> int:
    from glm_engine.ops.torch_ops import reference_attention

    args = arguments(__doc__.split("\n")[0], argv)
    try:
        device, _ = target(args)
    except NoDevice as exc:
        return skipped(str(exc))
    live = LiveTable(["s", "dtype", "backend", "nmse", "bound", "max err", "result"])
    for s in LENGTHS:
        for dtype in (torch.float16, torch.bfloat16):
            inputs = glm_inputs(s, dtype, device)
            (q, k, v), blocked = inputs
            expected = reference_attention(*(t.cpu().double() for t in (q, k, v)), blocked.cpu(), 1.0)
            for name, call in backend_calls():
                live.add(check(inputs, expected, s, dtype, name, call))
    rows = live.rows
    bad = [f"{r[2]} s={r[0]} {r[1]}: {r[6]}" for r in rows if str(r[6]).split(" (")[0] in ("FAIL", "NaN")]
    refused = sum(str(r[6]).startswith("no kernel") for r in rows)
    summary(
        f"{len(rows) - refused - len(bad)} ok, {len(bad)} bad, {refused} no kernel"
        + (": " + "; ".join(bad) if bad else "")
    )
    return FAILED if bad else PASSED


if __name__ == "__main__":
    sys.exit(main())
