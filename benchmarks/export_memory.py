"""Peak memory of ``export_onnx`` against the size of the model it writes: the export must never hold two copies.

Writes a random fp16 native checkpoint, then exports it in a fresh process and reports that process's peak RSS growth
(which also counts the checkpoint pages it maps) next to the weight bytes written. Asserts nothing.
Run: ``python benchmarks/export_memory.py [--layers 8 --hidden 2048]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from onnx_decode import bench_config

from glm_engine.checkpoint import save_native
from glm_engine.model.weights import random_state_dict
from glm_engine.tokenizer import BUILTIN_TOKENIZER_PATH, MODEL_FILENAME

# Linux: writing 5 to clear_refs resets the peak (VmHWM), so the peak is the export's own, not the imports'.
CHILD = """
import sys, time, torch
from glm_engine.export.onnx_export import export_onnx
def status(field):
    line = next(l for l in open('/proc/self/status') if l.startswith(field))
    return int(line.split()[1]) / 1024
open('/proc/self/clear_refs', 'w').write('5')
base = status('VmRSS')
started = time.perf_counter()
exported = export_onnx(sys.argv[1], sys.argv[2], dtype=torch.float16)
print(f"exported {exported.weight_bytes / 2**20:.0f} MiB of fp16 weights in {time.perf_counter() - started:.1f} s; "
      f"peak RSS {status('VmHWM') - base:.0f} MiB above the {base:.0f} MiB before the export")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=2048)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="export-memory-"))
    try:
        config = bench_config(args.layers, args.hidden, 8192)
        state = {k: v.half() for k, v in random_state_dict(config, 1).items()}
        save_native(work / "checkpoint", config, state)
        shutil.copyfile(BUILTIN_TOKENIZER_PATH, work / "checkpoint" / MODEL_FILENAME)
        del state
        root = str(Path(__file__).resolve().parent.parent)
        subprocess.run(
            [sys.executable, "-c", CHILD, str(work / "checkpoint"), str(work / "onnx")],
            check=True,
            env={"PYTHONPATH": root, "PATH": ""},
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
