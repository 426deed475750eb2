"""Peak host RAM and time of loading, converting and exporting a multi-shard SAT checkpoint of a few GB.

Writes a random fp16 checkpoint at TP=4 in the reference's layout (``glm_engine.bench.footprint``; default 8 layers
of GLM-130B's 4096-wide sibling, about 3.9 GB), then runs each operation in a fresh interpreter and prints its peak
resident set (``VmHWM``, memory-mapped checkpoint pages it touched included) next to the checkpoint's size, beside the
naive baseline of ``torch.load``-ing every shard whole and concatenating them (the reference stack's pattern).
The measuring is ``glm_engine.bench.footprint.measure_footprint``; this script only names the operations.

``--chatglm-layers N`` (default 2; 0 skips it) also writes a random ChatGLM-6B-shaped Hugging Face folder (N layers at
the release's full width, fp16, ``lm_head`` stored equal to the embedding as the release stores it) and loads it in
bf16, against the bytes the model holds (the tied table once): the load that issue 20 measured at about twice its
weights. Asserts nothing. Run:
``python benchmarks/checkpoint_memory.py [--layers 8 --hidden 4096] [--only convert] [--chatglm-layers 8] [--keep]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from glm_engine.bench.footprint import (
    CHATGLM_6B_WIDTHS,
    measure_footprint,
    random_config,
    write_random_chatglm_folder,
    write_random_checkpoint,
)
from glm_engine.bench.models import Shape
from glm_engine.model.chatglm.config import ChatGLMConfig

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
CHATGLM_LOAD = ("import glm_engine", "engine = glm_engine.load(src, backend='cpu', dtype='bf16', tokenizer=False)")


def chatglm_load(root: Path, layers: int) -> None:
    """Write the random ChatGLM-6B-shaped folder, load it in bf16 in a fresh interpreter, print peak against held."""
    started = time.perf_counter()
    size = write_random_chatglm_folder(root / "chatglm", layers)
    config = ChatGLMConfig(num_layers=layers, **CHATGLM_6B_WIDTHS)
    held = (config.num_parameters() - config.vocab_size * config.hidden_size) * 2  # bf16, the tied table once
    print(
        f"ChatGLM-6B-shaped folder: {layers} layers, {size / GIB:.2f} GiB fp16 with lm_head (written in "
        f"{time.perf_counter() - started:.1f} s); the bf16 model holds {held / GIB:.2f} GiB"
    )
    setup, code = CHATGLM_LOAD
    result = measure_footprint(code, setup, {"src": str(root / "chatglm")})
    peak, added = (result.peak_bytes or 0) / GIB, (result.added_bytes or 0) / GIB
    print(f"{'operation':58} {'peak RSS GiB':>12} {'above base':>10} {'x held':>7} {'seconds':>8}")
    name = "glm_engine.load() ChatGLM-6B folder (cpu, bf16)"
    print(f"{name:58} {peak:12.2f} {added:10.2f} {added * GIB / held:7.2f} {result.seconds:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--inner", type=int, default=8192)
    parser.add_argument("--only", default=None, help="run only the operations whose name contains this")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    parser.add_argument("--chatglm-layers", type=int, default=2, help="layers of the ChatGLM-6B folder (0: skip)")
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
        if args.chatglm_layers:
            chatglm_load(root, args.chatglm_layers)
    finally:
        if not args.keep:
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
