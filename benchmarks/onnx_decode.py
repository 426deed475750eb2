"""Batch-1 decode speed: ONNX Runtime (CPU provider) on the exported graph against glm-engine's CPU backend, on the
same random GLM with the same weights and quantization, measured in one process.

Each variant is exported (ORT) or loaded (engine) from the same seeded preset weights, prefilled with a short prompt,
then timed over cached decode steps in interleaved rounds so machine noise hits every variant alike. Both runtimes get
the same thread count. MatMulNBits runs at accuracy level 0 (exact, what ``--verify`` checks) and level 4 (int8
activations, ORT's fast CPU path; anchors.md section 4.1 notes its accuracy risk); INT8 also runs as the
DequantizeLinear form (``--target tensorrt``). The prefill of each round is timed too (it asks for the last
position's logits only, as generation does). Prints a table; asserts nothing.
Run: ``python benchmarks/onnx_decode.py [--layers 4 --hidden 1536 --steps 32 --rounds 3 --prompt 16 --only fp32]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from glm_engine.backends.onnxruntime.backend import OnnxRuntimeBackend
from glm_engine.config import GLMConfig
from glm_engine.engine import load
from glm_engine.export.onnx_export import export_onnx
from glm_engine.exported import QuantTarget
from glm_engine.generation.masks import generation_blocked
from glm_engine.quant.spec import QuantSpec
from glm_engine.vocab import VocabLayout

PRESET = "glm-tiny"  # a preset name means seeded random weights; the config below replaces its shape


def bench_config(layers: int, hidden: int, vocab: int, positions: int = 512) -> GLMConfig:
    """A random GLM of the given shape whose context holds ``positions`` tokens (at least 512)."""
    top = vocab - 8
    names = ("mask", "gmask", "smask", "eod", "sop", "eop", "enc", "dblock")
    layout = VocabLayout(text_offset=0, eos=2, pad=0, **{name: top + i for i, name in enumerate(names)})
    return GLMConfig(
        layers, hidden, hidden // 128, 8 * hidden // 3 // 64 * 64, vocab, max(512, positions), vocab_layout=layout
    )


def time_steps(runner: object, prompt: int, steps: int) -> tuple[float, list[float]]:
    """Seconds of a ``prompt``-token prefill and of each cached decode step after it (batch 1)."""
    total = prompt + steps
    blocked = generation_blocked(prompt, total)[None, None]
    ids = torch.randint(0, 1000, (1, total))
    positions = torch.arange(total)[None]
    cache = runner.new_cache(1, total)
    times = []
    with torch.inference_mode():
        started = time.perf_counter()
        runner.forward(ids[:, :prompt], positions[:, :prompt], blocked[:, :, :prompt, :prompt], cache, last_only=True)
        prefill = time.perf_counter() - started
        for column in range(prompt, total):
            started = time.perf_counter()
            runner.forward(
                ids[:, column : column + 1],
                positions[:, column : column + 1],
                blocked[:, :, column : column + 1, : column + 1],
                cache,
            )
            times.append(time.perf_counter() - started)
    return prefill, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens prefilled before the timed steps")
    parser.add_argument("--only", default=None, help="run only the variants whose name contains this (e.g. fp32)")
    args = parser.parse_args()
    config = bench_config(args.layers, args.hidden, args.vocab, args.prompt + args.steps)
    threads = torch.get_num_threads()
    work = Path(tempfile.mkdtemp(prefix="onnx-bench-"))
    variants: dict[str, object] = {}
    ort, dq = QuantTarget.ort, QuantTarget.tensorrt  # MatMulNBits, or DequantizeLinear + MatMul
    cases = [("fp32", None, ort, 0), ("int8-rowwise", QuantSpec(8), ort, 0), ("int8-rowwise", QuantSpec(8), ort, 4)]
    cases += [("int8-rowwise", QuantSpec(8), dq, 0), ("int4-rowwise", QuantSpec(4), ort, 0)]
    cases += [("int4-rowwise", QuantSpec(4), ort, 4), ("int4-groupwise(128)", QuantSpec(4, 128), ort, 0)]
    cases = [case for case in cases if args.only is None or args.only in case[0]]
    for name, spec, target, level in cases:
        folder = work / f"{name}-{target.value}-{level}"
        export_onnx(PRESET, folder, torch.float32, quant=spec, target=target, accuracy_level=level, config=config)
        form = "" if spec is None else (f" nbits level {level}" if target is ort else " dq+matmul")
        variants[f"ort cpu  {name}{form}"] = OnnxRuntimeBackend().load_runner(str(folder), threads=threads)
        engine_name = f"engine cpu {name}"
        if engine_name not in variants:
            quant = None if spec is None else spec
            variants[engine_name] = load(PRESET, backend="cpu", dtype="fp32", config=config, quant=quant).runner
    samples: dict[str, list[float]] = {name: [] for name in variants}
    prefills: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, runner in variants.items():
            prefill, steps = time_steps(runner, args.prompt, args.steps)
            prefills[name].append(prefill)
            samples[name] += steps
    print(
        f"GLM {args.layers} layers, hidden {args.hidden}, vocab {args.vocab} "
        f"({config.num_parameters() / 1e6:.0f}M parameters), fp32 activations, batch 1, {threads} threads, "
        f"median of {args.rounds}x{args.steps} steps after a {args.prompt}-token prompt"
    )
    print(f"{'variant':44} {'ms/token':>9} {'tokens/s':>9} {'prefill ms':>11}")
    for name in sorted(variants, key=lambda n: (n.split()[2], n)):
        ms = statistics.median(samples[name]) * 1e3
        prefill_ms = statistics.median(prefills[name]) * 1e3
        print(f"{name:44} {ms:9.2f} {1e3 / ms:9.1f} {prefill_ms:11.1f}")


if __name__ == "__main__":
    main()
