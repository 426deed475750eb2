"""Batch-1 decode speed of glm-engine against chatglm.cpp (ggml) on the same ChatGLM-6B-shaped weights, per bit width.

Pairs: ggml f16 vs our bf16, ggml q8_0 vs our INT8 rowwise, ggml q4_0 (blocks of 32) vs our INT4 groupwise 32 and INT4
rowwise; at 8 and 4 bits each of ours with ``lm_head`` in bf16 (the reference's choice) and quantized like the linears
(``quant_output``, like-for-like with ggml, which quantizes its output layer). Both engines get the same prompt ids,
decode greedily for ``--new-tokens`` tokens with ``--threads`` threads, and the prefill step is timed apart from the
decode steps (tokens/s below counts decode steps only). For each width
the pair is loaded together and timed in alternating rounds (median of ``--rounds``), so machine noise hits both.
Prints a table; asserts nothing.

chatglm.cpp is not a dependency of glm-engine. Install it into a separate venv (it builds from source, minutes):
``CMAKE_POLICY_VERSION_MINIMUM=3.5 pip install chatglm-cpp==0.4.2 torch==2.13.0`` and run this script from a Python
that has both packages (e.g. ``PYTHONPATH=/path/to/glm-engine``). The ggml files are chatglm.cpp's own format,
written by ``chatglm_cpp.convert.ChatGLMConverter`` from the same state dict as ``--hf-dir`` (its word embedding must
be tied to ``lm_head``, which chatglm.cpp requires); files are looked up as ``<ggml-dir>/*-{f16,q8_0,q4_0}.bin``.

Run: ``python benchmarks/vs_chatglm_cpp.py --ggml-dir DIR --hf-dir HF_FOLDER [--threads 2 --new-tokens 32]``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import statistics
import time
from pathlib import Path

import torch

import glm_engine
from glm_engine.generation.chat import ChatOptions, generate_ids

PROMPT = "Explain how a large language model decodes one token at a time, in a few sentences."
# (label, ggml type, [(name, glm-engine quant, quant scheme, group size, quantize lm_head)])
PAIRS = [
    ("16-bit", "f16", [("bf16", None, "rowwise", None, False)]),
    (
        "8-bit",
        "q8_0",
        [("int8 rowwise", "int8", "rowwise", None, False), ("int8 rowwise + lm_head", "int8", "rowwise", None, True)],
    ),
    (
        "4-bit",
        "q4_0",
        [
            ("int4 groupwise 32", "int4", "groupwise", 32, False),
            ("int4 groupwise 32 + lm_head", "int4", "groupwise", 32, True),
            ("int4 rowwise + lm_head", "int4", "rowwise", None, True),
        ],
    ),
]


def time_ggml(model, ids: list[int], new_tokens: int, threads: int) -> tuple[float, list[float]]:
    """chatglm.cpp: (prefill seconds, decode step seconds), greedy, as ``Pipeline._stream_generate_ids`` drives it."""
    from chatglm_cpp import _C

    config = _C.GenerationConfig(
        max_length=len(ids) + new_tokens + 1, max_new_tokens=new_tokens, max_context_length=len(ids), do_sample=False
    )
    # chatglm-cpp 0.4.2 has no thread setting in its Python API: ggml uses all hardware threads; run with
    # --threads equal to the core count (or pin the process with taskset) for a like-for-like comparison.
    del threads
    input_ids = list(ids)
    n_past = 0
    times = []
    for _ in range(new_tokens):
        start = time.perf_counter()
        token = model.generate_next_token(input_ids, None, config, n_past, len(input_ids) + new_tokens)
        times.append(time.perf_counter() - start)
        n_past = len(input_ids)
        input_ids.append(token)
    return times[0], times[1:]


def time_engine(engine, ids: list[int], new_tokens: int) -> tuple[float, list[float]]:
    """glm-engine: (prefill seconds, decode step seconds) from the per-token callback of a greedy generation."""
    options = ChatOptions(do_sample=False, max_new_tokens=new_tokens)
    strategy = options.build_strategy(engine.config)
    stamps = [time.perf_counter()]
    generate_ids(
        engine.runner,
        engine.config,
        [ids],
        len(ids) + new_tokens,
        strategy,
        on_token=lambda *_: stamps.append(time.perf_counter()),
    )
    deltas = [b - a for a, b in itertools.pairwise(stamps)]
    return deltas[0], deltas[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ggml-dir", type=Path, required=True)
    parser.add_argument("--hf-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--widths", default="16-bit,8-bit,4-bit")
    args = parser.parse_args()
    try:
        import chatglm_cpp
    except ImportError as exc:
        raise SystemExit(
            "chatglm_cpp is missing: CMAKE_POLICY_VERSION_MINIMUM=3.5 pip install chatglm-cpp==0.4.2"
        ) from exc
    torch.set_num_threads(args.threads)
    rows = []
    for label, ggml_type, ours in PAIRS:
        if label not in args.widths.split(","):
            continue
        (ggml_file,) = sorted(args.ggml_dir.glob(f"*-{ggml_type}.bin"))
        ggml = chatglm_cpp.Pipeline(str(ggml_file)).model
        engines = {}
        for name, quant, scheme, group, output in ours:
            engines[name] = glm_engine.load_chatglm(
                args.hf_dir,
                backend="cpu",
                dtype="bf16",
                quant=quant,
                quant_scheme=scheme,
                quant_group_size=group,
                quant_output=output,
            )
        ids = next(iter(engines.values())).tokenizer.build_inputs(PROMPT)
        runners = {f"chatglm.cpp {ggml_type}": functools.partial(time_ggml, ggml, ids, args.new_tokens, args.threads)}
        for name, engine in engines.items():
            runners[f"glm-engine {name}"] = functools.partial(time_engine, engine, ids, args.new_tokens)
        for run in runners.values():  # warm-up
            run()
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                prefill, steps = run()
                results[name].append((prefill, statistics.median(steps)))
        base = None
        for name, samples in results.items():
            prefill = statistics.median(s[0] for s in samples)
            step = statistics.median(s[1] for s in samples)
            base = base or step
            rows.append((label, name, 1.0 / step, step * 1e3, prefill * 1e3, base / step))
            print(f"{label:7s} {name:32s} {1.0 / step:7.2f} tok/s {step * 1e3:8.1f} ms/tok", flush=True)
        ggml = engines = runners = None
        gc.collect()
    print(
        f"\nbatch 1, {len(ids)}-token prompt, {args.new_tokens} greedy tokens, {args.threads} threads, "
        f"median of {args.rounds} rounds (median step per round)"
    )
    print("| width | engine | decode tok/s | ms/token | prefill ms | speed vs chatglm.cpp |")
    print("|---|---|---|---|---|---|")
    for label, name, tps, ms, pre, ratio in rows:
        print(f"| {label} | {name} | {tps:.2f} | {ms:.1f} | {pre:.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
