"""Decode speed of the GLM graph on one backend: tokens/s and achieved GB/s of weights against the device's bandwidth.

Decode reads every weight once per token, so ``weight bytes / time per token`` next to the memory bandwidth measured
on the same device (a large read-only reduction and a copy) shows how close decode runs to the roofline. Prints a
table; asserts nothing. Run: ``python benchmarks/decode.py [--backend cuda] [--layers 12 --hidden 2048 ...]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from glm_engine.backends.registry import REGISTRY, op_table_for
from glm_engine.config import GLMConfig
from glm_engine.generation.masks import generation_blocked
from glm_engine.model.glm import GLMModel
from glm_engine.model.weights import GLMWeights, random_state_dict
from glm_engine.ops.interface import Op

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: torch.device) -> None:
    """Wait for queued device work so wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)


def measure_bandwidth(device: torch.device, gib: float = 1.0, repeats: int = 5) -> tuple[float, float]:
    """(read GB/s, copy GB/s counting read + write) over a buffer far larger than any cache; best of ``repeats``."""
    x = torch.ones(int(gib * 2**30) // 4, device=device)
    y = torch.empty_like(x)
    read, copy = [], []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        x.sum()
        synchronize(device)
        read.append(x.nbytes / (time.perf_counter() - start) / 1e9)
        start = time.perf_counter()
        y.copy_(x)
        synchronize(device)
        copy.append(2 * x.nbytes / (time.perf_counter() - start) / 1e9)
    return max(read), max(copy)


def decode_time(model: GLMModel, context: int, steps: int, warmup: int, cuda_graphs: bool = False) -> list[float]:
    """Seconds per decode step, after a prefill of ``context`` tokens; with ``cuda_graphs`` the steps replay a CUDA
    graph where the backend allows (``model.decode_stepper``; the capture falls in the warmup steps)."""
    total = context + steps + warmup
    device = model.device
    blocked = generation_blocked(context, total)[None, None].to(device)
    positions = torch.arange(total, device=device).unsqueeze(0)
    tokens = torch.randint(20000, 21000, (1, total), device=device)
    cache = model.new_cache(1, total)
    model.forward(tokens[:, :context], positions[:, :context], blocked[..., :context, :context], cache, last_only=True)
    stepper = model.decode_stepper(None, cuda_graphs)
    times = []
    for col in range(context, total):
        synchronize(device)
        start = time.perf_counter()
        stepper.step(
            cache, tokens[:, col : col + 1], positions[:, col : col + 1], blocked[..., col : col + 1, : col + 1]
        )
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times[warmup:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--inner", type=int, default=5464)
    parser.add_argument("--vocab", type=int, default=150528)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtypes", default="fp32,bf16,fp16")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay decode steps as CUDA graphs (cuda only)")
    args = parser.parse_args()

    config = GLMConfig(
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_attention_heads=args.heads,
        inner_hidden_size=args.inner,
        vocab_size=args.vocab,
        max_sequence_length=2048,
    )
    backend, _ = REGISTRY.resolve(args.backend)
    device = backend.device()
    read_bw, copy_bw = measure_bandwidth(device)
    print(
        f"backend {backend.name} on {backend.devices()[0].name}; memory bandwidth read {read_bw:.1f} GB/s, "
        f"copy {copy_bw:.1f} GB/s (read+write); torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    )
    print(
        f"model: {config.num_parameters() / 1e6:.0f}M parameters ({args.layers} layers, hidden {args.hidden}, "
        f"vocab {args.vocab}); context {args.context}, {args.steps} timed steps\n"
    )
    print("| dtype | ms/token (median) | tokens/s | weights GB | weight GB/s | share of read bandwidth |")
    print("|---|---|---|---|---|---|")
    state_dict = random_state_dict(config, seed=0)
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        if not backend.supports(Op.LINEAR, dtype):
            print(f"| {name} | not supported by {backend.name} | | | | |")
            continue
        weights = GLMWeights.from_state_dict(state_dict, config, dtype, device)
        model = GLMModel(config, weights, op_table_for(backend, dtype))
        times = decode_time(model, args.context, args.steps, args.warmup, args.cuda_graphs)
        median = statistics.median(times)
        gigabytes = weights.nbytes() / 1e9
        print(
            f"| {name} | {median * 1e3:.1f} | {1 / median:.2f} | {gigabytes:.2f} | {gigabytes / median:.1f} | "
            f"{gigabytes / median / read_bw:.0%} |"
        )
        del model, weights


if __name__ == "__main__":
    main()
