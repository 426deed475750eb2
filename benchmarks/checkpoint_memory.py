"""Peak host RAM and time of loading, converting and exporting a multi-shard SAT checkpoint of a few GB.

Writes a random fp16 checkpoint at TP=4 in the reference's layout (``glm_engine.bench.footprint``; default 8 layers
of GLM-130B's 4096-wide sibling, about 3.9 GB), then runs each operation in a fresh interpreter and prints its peak
resident set (``VmHWM``, memory-mapped checkpoint pages it touched included) next to the checkpoint's size, beside the
naive baseline of ``torch.load``-ing every shard whole and concatenating them (the reference stack's pattern).
The measuring is ``glm_engine.bench.footprint.measure_footprint``; this script only names the operations.
Asserts nothing. Run: ``python benchmarks/checkpoint_memory.py [--layers 8 --hidden 4096] [--only convert] [--keep]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from glm_engine.bench.footprint import measure_footprint, random_config, write_random_checkpoint
from glm_engine.bench.models import Shape

GIB = 2**30

# name -> (imports, not counted in the operation's growth; the operation). ``src`` is the TP=4 SAT checkpoint,
# ``out`` a folder for what the operations write; the native checkpoint is written by the conversion before it.
OPERATIONS = {
    "import torch and glm_engine (floor)": ("import glm_engine.checkpoint", "pass"),
    "naive: torch.load every shard whole, concatenate": (
        "import glob, torch",
        """
shards = [torch.load(f, map_location="cpu", weights_only=True)["module"] for f in sorted(glob.glob(f"{src}/1/mp_*"))]
merged = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}  # a merge's bytes (which dim does not matter)
""",
    ),
    "validate only (metadata)": ("from glm_engine.checkpoint import open_checkpoint", "open_checkpoint(src)"),
    "load TP=4 checkpoint at TP=1 (fp16)": (
        "import torch\nfrom glm_engine.checkpoint import open_checkpoint",
        "weights = open_checkpoint(src).rank_state_dict(0, 1, torch.float16)",
    ),
    "glm_engine.load() at TP=1 (cpu, fp16, model + tokenizer)": (
        "import glm_engine",
        "engine = glm_engine.load(src, backend='cpu', dtype='fp16')",
    ),
    "load rank 0 of TP=4 (fp16)": (
        "import torch\nfrom glm_engine.checkpoint import open_checkpoint",
        "weights = open_checkpoint(src).rank_state_dict(0, 4, torch.float16)",
    ),
    "convert-tp 4 -> 2": (
        "from glm_engine.checkpoint.convert import convert_tp",
        "convert_tp(src, f'{out}/tp2', 2)",
    ),
    "convert-tp 4 -> 8, INT4": (
        "from glm_engine.checkpoint.convert import convert_tp",
        "convert_tp(src, f'{out}/tp8q', 8, bits=4)",
    ),
    "convert SAT -> native (1 GiB files)": (
        "from glm_engine.checkpoint.convert import convert_to_native",
        "convert_to_native(src, f'{out}/native', max_shard_bytes=2**30)",
    ),
    "load native at TP=1 (fp16)": (
        "import torch\nfrom glm_engine.checkpoint import open_checkpoint",
        "weights = open_checkpoint(f'{out}/native').rank_state_dict(0, 1, torch.float16)",
    ),
    "export ONNX fp16 from native": (
        "import torch\nfrom glm_engine.export.onnx_export import export_onnx",
        "export_onnx(f'{out}/native', f'{out}/onnx', dtype=torch.float16)",
    ),
}
NEEDS_NATIVE = ("load native", "export ONNX")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--inner", type=int, default=8192)
    parser.add_argument("--only", default=None, help="run only the operations whose name contains this")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    args = parser.parse_args()
    names = [n for n in OPERATIONS if args.only is None or args.only in n]
    if any(n.startswith(NEEDS_NATIVE) for n in names) and not any(n.startswith("convert SAT") for n in names):
        names.insert(0, "convert SAT -> native (1 GiB files)")  # what the native operations read
    root = Path(args.dir or tempfile.mkdtemp(prefix="glm-ckpt-bench-"))
    src, out = root / "tp4", root / "out"
    out.mkdir(parents=True, exist_ok=True)
    config = random_config("random:glm-130b", Shape(args.layers, args.hidden, args.heads, args.inner))
    started = time.perf_counter()
    size = write_random_checkpoint(src, config, tp=4)
    print(
        f"checkpoint: {config.num_parameters() / 1e9:.2f}B params, TP=4, {size / GIB:.2f} GiB fp16 "
        f"(written in {time.perf_counter() - started:.1f} s)"
    )
    print(f"{'operation':58} {'peak RSS GiB':>12} {'x ckpt':>7} {'above base':>10} {'seconds':>8}")
    try:
        for name in names:
            setup, code = OPERATIONS[name]
            result = measure_footprint(code, setup, {"src": str(src), "out": str(out)})
            peak = (result.peak_bytes or 0) / GIB
            added = (result.added_bytes or 0) / GIB
            print(f"{name:58} {peak:12.2f} {peak * GIB / size:7.2f} {added:10.2f} {result.seconds:8.1f}")
    finally:
        if not args.keep:
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
