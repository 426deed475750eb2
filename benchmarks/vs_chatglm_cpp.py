"""Batch-1 decode speed of glm-engine against chatglm.cpp (ggml) on the same ChatGLM-6B-shaped weights, per bit width.

Pairs: ggml f16 vs our bf16, ggml q8_0 vs our INT8 rowwise, ggml q4_0 (blocks of 32) vs our INT4 groupwise 32 and INT4
rowwise; at 8 and 4 bits each of ours with ``lm_head`` in bf16 (the reference's choice) and quantized like the linears
(``quant_output``, like-for-like with ggml, which quantizes its output layer). Both engines are timed by
``glm-engine bench``'s own protocol and summarised by its rows (``glm_engine.bench.measure`` / ``rows``): the same
workload (a ``--prompt``-token prompt of random text ids, then ``--new-tokens`` decode steps fed the same ids), the
prefill timed apart from the decode steps, warm-up and repetitions alike. chatglm.cpp sits behind the bench's runner
interface (``glm_engine.bench.ggml_worker.GgmlRunner``, which ``glm-engine bench --compare-chatglm-cpp`` uses too); it
builds its own positions and mask from the prompt length, and each of its steps
includes its greedy choice over the vocabulary (a fraction of a millisecond). For each width the engines are loaded
together and measured one after another. Prints a table; asserts nothing. The same ``glm-engine`` numbers alone:
``glm-engine bench --model HF_FOLDER --dtype bf16 --quant none,int8,int4 -t pg35,32 --no-baseline``.

chatglm.cpp is not a dependency of glm-engine. Install it into a separate venv (it builds from source, minutes):
``CMAKE_POLICY_VERSION_MINIMUM=3.5 pip install chatglm-cpp==0.4.2 torch==2.13.0`` and run this script from a Python
that has both packages (e.g. ``PYTHONPATH=/path/to/glm-engine``). The ggml files are chatglm.cpp's own format,
written by ``chatglm_cpp.convert.ChatGLMConverter`` from the same state dict as ``--hf-dir`` (its word embedding must
be tied to ``lm_head``, which chatglm.cpp requires); files are looked up as ``<ggml-dir>/*-{f16,q8_0,q4_0}.bin``.

Run: ``python benchmarks/vs_chatglm_cpp.py --ggml-dir DIR --hf-dir HF_FOLDER [--threads 2 --new-tokens 32]``.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

import torch

from glm_engine.bench.ggml_worker import GgmlRunner
from glm_engine.bench.measure import measure
from glm_engine.bench.models import resolve_model
from glm_engine.bench.rows import row_from_measurement
from glm_engine.bench.spec import Kind, Point, QuantChoice, TestSpec
from glm_engine.bench.workload import build_workload

# (label, ggml type, [(name, our weights)])
PAIRS = [
    ("16-bit", "f16", [("bf16", QuantChoice())]),
    ("8-bit", "q8_0", [("int8 rowwise", QuantChoice(8)), ("int8 rowwise + lm_head", QuantChoice(8, None, True))]),
    (
        "4-bit",
        "q4_0",
        [
            ("int4 groupwise 32", QuantChoice(4, 32)),
            ("int4 groupwise 32 + lm_head", QuantChoice(4, 32, True)),
            ("int4 rowwise + lm_head", QuantChoice(4, None, True)),
        ],
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ggml-dir", type=Path, required=True)
    parser.add_argument("--hf-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=35, help="prompt tokens (prefilled in one timed forward)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--widths", default="16-bit,8-bit,4-bit")
    args = parser.parse_args()
    try:
        import chatglm_cpp
    except ImportError as exc:
        raise SystemExit(
            "chatglm_cpp is missing: CMAKE_POLICY_VERSION_MINIMUM=3.5 pip install chatglm-cpp==0.4.2"
        ) from exc
    # chatglm-cpp 0.4.2 has no thread setting in its Python API: ggml uses all hardware threads; run with --threads
    # equal to the core count (or pin the process with taskset) for a like-for-like comparison.
    torch.set_num_threads(args.threads)
    source = resolve_model(str(args.hf_dir))
    test = TestSpec(Kind.COMBINED, args.prompt, args.new_tokens)
    total = args.prompt + args.new_tokens
    work = build_workload(source.family, source.config, 1, args.prompt, total, source.text_ids, seed=1234)
    rows = []
    for label, ggml_type, ours in PAIRS:
        if label not in args.widths.split(","):
            continue
        (ggml_file,) = sorted(args.ggml_dir.glob(f"*-{ggml_type}.bin"))
        ggml = GgmlRunner(chatglm_cpp.Pipeline(str(ggml_file)).model, args.prompt, total)
        runners = {f"chatglm.cpp {ggml_type}": (ggml, lambda ggml=ggml: ggml, None)}
        for name, quant in ours:
            loaded = source.load("cpu", "bf16", quant)
            stepper = loaded.runner.decode_stepper(steps=args.new_tokens)
            runners[f"glm-engine {name}"] = (loaded.runner, lambda s=stepper: s, loaded.weight_bytes)
        base = None
        for name, (runner, make_stepper, weight_bytes) in runners.items():
            point = Point("cpu", "bf16", QuantChoice(), 1, 1, 0, test)
            result = measure(runner, work, point, args.repetitions, 1, make_stepper)
            row = row_from_measurement(name, point, result, weight_bytes, None, "cpu")
            decode = 1e3 / row.itl_median_ms
            base = base or decode
            rows.append((label, name, decode, row.itl_median_ms, row.ttft_ms, decode / base))
            print(f"{label:7s} {name:40s} {decode:7.2f} tok/s {row.itl_median_ms:8.1f} ms/tok", flush=True)
        ggml = runners = None
        gc.collect()
    print(
        f"\nbatch 1, {args.prompt}-token prompt, {args.new_tokens} decode steps, {args.threads} threads, "
        f"median step over {args.repetitions} repetitions (glm-engine bench's protocol)"
    )
    print("| width | engine | decode tok/s | ms/token | prefill ms | speed vs chatglm.cpp |")
    print("|---|---|---|---|---|---|")
    for label, name, tps, ms, pre, ratio in rows:
        print(f"| {label} | {name} | {tps:.2f} | {ms:.1f} | {pre:.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
