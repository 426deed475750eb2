"""Step 5: greedy and beam-search tokens of the demo model with CUDA graphs, eagerly, and on the CPU.

The built-in demo model (docs/demo-model.md) generates from two prompts (a blank and a ``[gMASK]`` continuation),
greedy and with deterministic beam search, on the GPU in fp32 and fp16, once with decode steps replayed as CUDA
graphs and once eagerly, and in fp32 on the CPU. Graphs and eager steps run the same kernels on the same cache, so
their tokens must be equal in every dtype; the fp32 GPU tokens must equal the CPU's (tests/test_cuda_backend.py
asserts the same for greedy); fp16 rounds differently from fp32, so where its tokens leave the CPU's is shown, not
judged. The stepper column says how decode ran (graph steps, captures, or why eagerly): graphs that silently fell
back to eager steps are a failure here. With ``--cpu`` the CPU runs the "device" side too and the graph rows are
SKIP with the stepper's reason.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch

from tools.device_check.common import FAILED, PASSED, LiveTable, NoDevice, arguments, skipped, summary, target

PROMPTS = ("The best way to predict the future is to [MASK] it.", "A computer is [gMASK]")
OUT_LENGTH = 48  # tokens, the prompt included (GenerationOptions.out_seq_length): enough steps to capture graphs
STRATEGIES = {
    "greedy": {"top_k": 1, "top_p": 0.0},
    "beam": {"sampling_strategy": "BeamSearchStrategy", "num_beams": 4, "deterministic": True},
}
GPU_DTYPES = ("fp32", "fp16")


def generate(engine: Any, strategy: str, graphs: bool | None) -> tuple[list[list[int]], str, bool]:
    """Tokens of every prompt, how the decode steps ran (the steppers' own account), and whether any step was a
    replayed graph. ``graphs`` None leaves the choice to the engine."""
    runner = engine.runner
    made: list[Any] = []
    original = runner.decode_stepper

    def recording(*args: Any, **kwargs: Any) -> Any:
        made.append(original(*args, **kwargs))
        return made[-1]

    runner.cuda_graphs = graphs
    runner.decode_stepper = recording
    try:
        results = engine.generate(list(PROMPTS), out_seq_length=OUT_LENGTH, **STRATEGIES[strategy])
    finally:
        del runner.decode_stepper  # the instance attribute goes; the method is back
    replayed = sum(getattr(s, "graph_steps", 0) for s in made)
    captures = sum(getattr(s, "captures", 0) for s in made)
    reasons = sorted({s.reason for s in made})
    how = f"{replayed} graph steps, {captures} captures" if replayed else "eager: " + "; ".join(reasons)
    if replayed and any("failed" in r for r in reasons):
        how += "; " + "; ".join(reasons)
    return [list(r.token_ids) for r in results], how, replayed > 0


def first_difference(got: list[list[int]], expected: list[list[int]]) -> str:
    """ "equal", or the first prompt and token index where ``got`` leaves ``expected``."""
    for prompt, (a, b) in enumerate(zip(got, expected)):
        if a != b:
            index = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            return f"differs: prompt {prompt}, token {index}"
    return "equal"


def main(argv: Sequence[str] | None = None) -> int:
    import glm_engine

    args = arguments(__doc__.split("\n")[0], argv)
    try:
        device, backend = target(args)
    except NoDevice as exc:
        return skipped(str(exc))
    cpu = glm_engine.load(backend="cpu", dtype="fp32")
    reference = {name: generate(cpu, name, None)[0] for name in STRATEGIES}
    live = LiveTable(["strategy", "dtype", "decode", "vs eager", "vs CPU fp32", "stepper", "result"])
    bad = []
    for dtype in ("fp32",) if args.cpu else GPU_DTYPES:
        engine = glm_engine.load(backend=backend, dtype=dtype)
        for strategy in STRATEGIES:
            eager, eager_how, _ = generate(engine, strategy, False)
            versus_cpu = first_difference(eager, reference[strategy])
            judged = dtype == "fp32"  # fp16 rounds differently from the CPU's fp32: shown, not judged
            ok = versus_cpu == "equal" or not judged
            live.add([strategy, dtype, "eager", "-", versus_cpu, eager_how, "ok" if ok else "FAIL"])
            bad += [] if ok else [f"{strategy} {dtype} eager vs CPU"]
            if device.type != "cuda":
                live.add([strategy, dtype, "graphs", "-", "-", eager_how, "SKIP"])
                continue
            graphs, graphs_how, replayed = generate(engine, strategy, True)
            versus_eager = first_difference(graphs, eager)
            ok = versus_eager == "equal" and replayed
            row = [strategy, dtype, "graphs", versus_eager, first_difference(graphs, reference[strategy]), graphs_how]
            live.add([*row, "ok" if ok else "FAIL"])
            bad += [] if ok else [f"{strategy} {dtype} graphs"]
        del engine
        if device.type == "cuda":
            torch.cuda.empty_cache()
    summary(f"{len(live.rows)} rows, {len(bad)} failing" + (": " + ", ".join(bad) if bad else ""))
    return FAILED if bad else PASSED


if __name__ == "__main__":
    sys.exit(main())
