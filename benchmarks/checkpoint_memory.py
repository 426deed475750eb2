"""Peak host RAM and time for loading and converting a multi-shard SAT checkpoint of a few GB.

Writes a random fp16 checkpoint at TP=4 in the reference's layout (default about 3.9 GB), then runs each operation
in a fresh process and prints its peak resident set (``VmHWM``, which includes memory-mapped file pages that
were touched) against the checkpoint size, next to the naive baseline of ``torch.load``-ing every shard whole (what
the reference stack does). Asserts nothing. Run: ``python benchmarks/checkpoint_memory.py [--layers 8] [--keep]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from glm_engine.config import GLMConfig
from glm_engine.model.weights import parameter_shapes

GIB = 2**30


def bench_config(layers: int) -> GLMConfig:
    return GLMConfig(
        num_layers=layers, hidden_size=4096, num_attention_heads=32, inner_hidden_size=8192, vocab_size=150528
    )


def write_checkpoint(folder: Path, config: GLMConfig, tp: int) -> int:
    """Random shards of the right per-rank shapes, written one at a time; returns the bytes written."""
    (folder / "1").mkdir(parents=True)
    (folder / "latest").write_text("1")
    config.to_json_file(folder / "config.json")
    gen = torch.Generator().manual_seed(0)
    for rank in range(tp):
        shard = {
            k: torch.randn(shape, generator=gen, dtype=torch.float32).to(torch.float16) * 0.02
            for k, shape in parameter_shapes(config, tp).items()
        }
        torch.save({"module": shard}, folder / "1" / f"mp_rank_{rank:02d}_model_states.pt")
        del shard
    return sum(f.stat().st_size for f in (folder / "1").iterdir())


# Each operation runs in its own interpreter so its peak RSS is its own.
OPERATIONS = {
    "naive: torch.load every shard, merge (reference stack)": """
import torch, glob
shards = [torch.load(f, map_location="cpu", weights_only=True)["module"]
          for f in sorted(glob.glob(f"{src}/1/mp_rank_*"))]
from glm_engine.parallel.sharding import merge
merged = {k: merge(k, [s[k] for s in shards]) for k in shards[0]}
""",
    "load TP=4 checkpoint at TP=1 (fp16)": """
from glm_engine.checkpoint import open_checkpoint
import torch
weights = open_checkpoint(src).rank_state_dict(0, 1, torch.float16)
""",
    "glm_engine.load() at TP=1 (cpu, fp16, model + tokenizer)": """
import glm_engine
from glm_engine.tokenizer import BUILTIN_TOKENIZER_PATH
engine = glm_engine.load(src, backend="cpu", dtype="fp16", tokenizer=BUILTIN_TOKENIZER_PATH)
""",
    "load rank 0 of TP=4 (fp16)": """
from glm_engine.checkpoint import open_checkpoint
import torch
weights = open_checkpoint(src).rank_state_dict(0, 4, torch.float16)
""",
    "import torch and glm_engine (floor)": """
import glm_engine.checkpoint
""",
    "validate only (metadata)": """
from glm_engine.checkpoint import open_checkpoint
checkpoint = open_checkpoint(src)
""",
    "convert-tp 4 -> 2": """
from glm_engine.checkpoint.convert import convert_tp
convert_tp(src, f"{out}/tp2", 2)
""",
    "convert-tp 4 -> 8, INT4": """
from glm_engine.checkpoint.convert import convert_tp
convert_tp(src, f"{out}/tp8q", 8, bits=4)
""",
    "convert SAT -> native (1 GiB files)": """
from glm_engine.checkpoint.convert import convert_to_native
convert_to_native(src, f"{out}/native", max_shard_bytes=2**30)
""",
    "load native at TP=1 (fp16)": """
from glm_engine.checkpoint import open_checkpoint
import torch
weights = open_checkpoint(f"{out}/native").rank_state_dict(0, 1, torch.float16)
""",
}

# VmHWM is this process's own peak (ru_maxrss would also carry the parent's peak across fork + exec).
RUNNER = """
import re, sys, time, json
src, out = sys.argv[1], sys.argv[2]
started = time.perf_counter()
exec(sys.argv[3])
elapsed = time.perf_counter() - started
status = open("/proc/self/status").read()
print(json.dumps({"seconds": elapsed, "peak_kib": int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1))}))
"""


def measure(code: str, src: Path, out: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(src), str(out), code], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="glm-ckpt-bench-"))
    src, out = root / "tp4", root / "out"
    out.mkdir(parents=True, exist_ok=True)
    config = bench_config(args.layers)
    started = time.perf_counter()
    size = write_checkpoint(src, config, 4)
    print(
        f"checkpoint: {config.num_parameters() / 1e9:.2f}B params, TP=4, {size / GIB:.2f} GiB fp16 "
        f"(written in {time.perf_counter() - started:.1f} s)"
    )
    print(f"{'operation':58} {'peak RSS GiB':>12} {'x ckpt':>7} {'seconds':>8}")
    for name, code in OPERATIONS.items():
        result = measure(code, src, out)
        peak = result["peak_kib"] * 1024 / GIB
        print(f"{name:58} {peak:12.2f} {peak * GIB / size:7.2f} {result['seconds']:8.1f}")
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
