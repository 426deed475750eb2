"""Every CPU linear candidate's GB/s on a model's full-size weight shapes: the table behind docs/cpu-kernels.md.

``glm-engine`` picks each CPU linear's kernel by a short trial on slices of the weights at load
(``glm_engine/backends/cpu/kernel_choice.py``); this script times the same candidates on the *whole* weights of
ChatGLM-6B's shapes (QKV 12288x4096, dense 4096x4096, MLP 16384x4096 and 4096x16384, the output layer 130528x4096),
so the trial's choice can be checked against full-size numbers, the output layer's included. It uses the trial's own
loop (interleaved rounds, each candidate once on every shape in turn so no weight stays in cache, minimum over
rounds, the hopeless pruned after round one) and prints one markdown row per shape with the CPU model and flags.

Usage: ``python tools/measure_cpu_kernels.py [--dtype bf16] [--rows 1] [--rounds 4] [--threads N]``. It needs about
2.5 GB of memory for bf16 (random weights, seed 0). Run it on a quiet machine: the numbers are bandwidths.
"""

from __future__ import annotations

import argparse

import torch

from glm_engine.backends.cpu.features import cpu_model_name, kernel_flags
from glm_engine.backends.cpu.kernel_choice import candidates_for, row_class
from glm_engine.backends.cpu.kernel_trial import TrialItem, run_trial

CHATGLM_6B_SHAPES = {  # label: (out, in, bias)
    "qkv": (12288, 4096, True),
    "dense": (4096, 4096, True),
    "h_to_4h": (16384, 4096, True),
    "4h_to_h": (4096, 16384, True),
    "output": (130528, 4096, False),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--rows", type=int, default=1, help="rows per product (1: batch-1 decode)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    gen = torch.Generator().manual_seed(0)
    items = []
    for label, (out, inner, has_bias) in CHATGLM_6B_SHAPES.items():
        weight = (torch.randn(out, inner, generator=gen) * inner**-0.5).to(dtype)
        bias = torch.randn(out, generator=gen).to(dtype) if has_bias else None
        x = torch.randn(args.rows, inner, generator=gen).to(dtype)
        names = candidates_for(row_class(args.rows), dtype, has_bias)
        runs = {c.name: (lambda c=c, w=weight, b=bias, x=x: c.run(x, w, b)) for c in names}
        items.append(TrialItem(f"{label} {out}x{inner}{'+bias' if has_bias else ''}", weight.nbytes, runs))
    with torch.no_grad():
        results = run_trial(items, rounds=args.rounds)
    print(f"{cpu_model_name()} ({kernel_flags()}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{args.dtype}, {args.rows} row(s), min of {args.rounds} interleaved rounds, GB/s of weight read\n")
    names = list(dict.fromkeys(name for item in items for name in item.candidates))
    print("| shape | " + " | ".join(names) + " | fastest |")
    print("|---" * (len(names) + 2) + "|")
    for result in results:
        cells = [f"{result.gbps(n):.1f}" if n in result.seconds else "-" for n in names]
        print(f"| {result.key} | " + " | ".join(cells) + f" | {result.winner} |")
    print("\n(-: not a candidate for the shape, or pruned after round one as over 4x slower than the best)")


if __name__ == "__main__":
    main()
