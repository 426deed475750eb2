"""Continuous batching on the serving core (``glm_engine.serving.EngineCore``), without HTTP: the same greedy requests
run one at a time and then with 2, 4, 8 and 16 in flight; output tokens/s, inter-token latency p50/p99 and peak KV
blocks per concurrency, with the ratio to one at a time. Prints a table; asserts nothing. Name the CPU beside it.

Run: ``python benchmarks/serving_core.py [--model random:chatglm3-6b --layers 8] [--requests 16 --prompt 32
--new-tokens 32 --dtype fp32]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from glm_engine.backends.cpu.features import cpu_model_name
from glm_engine.bench.models import Shape, resolve_model
from glm_engine.bench.spec import QuantChoice
from glm_engine.serving.core import EngineCore
from glm_engine.serving.sampling import SamplingParams
from glm_engine.serving.scheduler import SchedulerLimits


def run(core: EngineCore, prompts: list[list[int]], new_tokens: int, concurrency: int) -> dict[str, float]:
    """All prompts through ``core`` with at most ``concurrency`` in flight; token times per request."""
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    pending = list(enumerate(prompts))
    last: dict[str, float] = {}
    gaps: list[float] = []
    peak_blocks = 0
    start = time.perf_counter()
    tokens = 0
    in_flight = 0
    while pending or core.has_work:
        while pending and in_flight < concurrency:
            index, prompt = pending.pop(0)
            core.add_request(str(index), prompt, params)
            in_flight += 1
        outputs = core.step()
        now = time.perf_counter()
        peak_blocks = max(peak_blocks, core.stats().blocks_used)
        for out in outputs:
            if out.choice is None:
                continue
            tokens += 1
            if out.request_id in last:
                gaps.append(now - last[out.request_id])
            last[out.request_id] = now
            if out.finished:
                in_flight -= 1
    elapsed = time.perf_counter() - start
    gaps.sort()
    return {
        "tokens_per_s": tokens / elapsed,
        "itl_p50_ms": 1e3 * statistics.median(gaps),
        "itl_p99_ms": 1e3 * gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))],
        "peak_blocks": peak_blocks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="as glm-engine bench --model (default: the demo model)")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--kv-cache-mib", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=64, help="prefill chunk (tokens)")
    args = parser.parse_args()
    source = resolve_model(args.model, Shape(layers=args.layers))
    loaded = source.load("cpu", args.dtype, QuantChoice())
    gen = torch.Generator().manual_seed(1234)
    prompts = [torch.randint(0, source.text_ids, (args.prompt,), generator=gen).tolist() for _ in range(args.requests)]
    tokens = source.family.blank_tokens(source.config)
    prompts = [p[:-2] + [tokens.gmask, tokens.sop] for p in prompts]  # as GLM-130B/ChatGLM-6B prompts end
    levels = [int(c) for c in args.concurrency.split(",")]
    limits = SchedulerLimits(max_tokens=256, chunk=args.chunk, max_running=max(levels))
    core = EngineCore(loaded.runner, args.kv_cache_mib << 20, limits)
    run(core, prompts[:2], 4, 2)  # warm-up
    threads = torch.get_num_threads()
    print(f"# serving core: {source.description}, cpu {args.dtype}, {threads} threads, {cpu_model_name()}")
    workload = f"{args.requests} requests, {args.prompt}-token prompts, {args.new_tokens} greedy tokens each"
    print(f"{workload}, prefill chunk {args.chunk}\n")
    columns = "output t/s | vs one at a time | ITL p50 ms | ITL p99 ms | p99 vs one at a time | peak KV blocks"
    print(f"| concurrency | {columns} |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for level in levels:
        row = run(core, prompts, args.new_tokens, level)
        base = base or row
        print(
            f"| {level} | {row['tokens_per_s']:.1f} | {row['tokens_per_s'] / base['tokens_per_s']:.2f}x "
            f"| {row['itl_p50_ms']:.1f} | {row['itl_p99_ms']:.1f} | {row['itl_p99_ms'] / base['itl_p99_ms']:.2f}x "
            f"| {row['peak_blocks']} |"
        )


if __name__ == "__main__":
    main()
