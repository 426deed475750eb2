"""Step 4: the test files that say something about a GPU, run by pytest on it, most important first.

On a GPU machine conftest.py leaves Triton's interpreter off, so the kernel tests compile their kernels and put their
tensors on the GPU (the ``kernel_device`` fixture); the ``needs_gpu`` tests and test_cuda_backend.py, which skip
elsewhere, run. With ``--cpu`` only the fast tests of the device logic run (no interpreter).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Sequence

from tools.device_check.common import FAILED, PASSED, arguments, skipped, summary

GPU_TESTS = (
    "tests/test_cuda_backend.py",
    "tests/test_cuda_attention.py",
    "tests/test_cuda_graph.py",
    "tests/test_triton_kernels.py",
    "tests/test_gqa_backends.py",
    "tests/test_paged_decode.py",
    "tests/test_bench_dequant_gemm.py",
    "tests/test_torch_cuda_base.py",
    "tests/test_rank_devices.py",
    "tests/test_suite_devices.py",
    "tests/test_rocm_dcu.py",
    "tests/test_sat_parity.py",
    "tests/test_model.py",
    "tests/test_engine.py",
)
CPU_TESTS = ("tests/test_torch_cuda_base.py", "tests/test_rank_devices.py", "tests/test_suite_devices.py")


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__.split("\n")[0], argv)
    if importlib.util.find_spec("pytest") is None:
        return skipped("pytest is not installed (pip install pytest: no other dependency of the tests is missing?)")
    if not args.cpu:
        import torch

        if not torch.cuda.is_available():
            return skipped("no GPU (torch.cuda.is_available() is False); --cpu runs the device-logic tests")
    files = CPU_TESTS if args.cpu else GPU_TESTS
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "--tb=line", *files]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = ""
    assert process.stdout is not None
    for line in process.stdout:
        print(line, end="", flush=True)
        last = line.strip() or last
    code = process.wait()
    summary(f"{len(files)} files: {last}")
    return PASSED if code == 0 else FAILED


if __name__ == "__main__":
    sys.exit(main())
