"""The suite runs on a GPU machine as it does on the CPU (issue 19, CUDA 10): where its Triton kernels get their
tensors.

Without a GPU conftest.py turns on Triton's interpreter, which reads host memory; with one the kernels are compiled
and read device memory only, so a test that hands a kernel CPU tensors fails there with "Pointer argument cannot be
accessed from Triton". Every test that runs a Triton kernel therefore takes the ``kernel_device`` fixture and puts
its tensors (or its op table) on that device. Which tests run a kernel is read from the sources: those that skip
without triton (``needs_triton``, or a module-wide ``pytestmark`` on ``triton_verdict``) and those that call a kernel
entry point by name. Tests marked ``needs_gpu`` place their tensors on the GPU themselves.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import torch
from conftest import KERNEL_DEVICE, kernel_device_for

TESTS = Path(__file__).parent
FIXTURE = "kernel_device"
# The functions (and the op-table class) through which tests launch Triton kernels.
KERNEL_ENTRY_POINTS = frozenset(
    {
        "dequant_matmul",
        "decode_attention",
        "paged_decode_attention",
        "TritonQuantLinear",
        "check_kernels",
        "time_kernels",
    }
)
# Tests that run a kernel on tensors they do not place, each with the reason that is still right on a GPU.
EXEMPT = {
    "test_the_serving_core_runs_its_decode_rows_through_an_op_tables_paged_kernel": (
        "the kernel reads the engine's own cache, on the device glm_engine.load chose (the GPU where there is one)"
    ),
}


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def _module_needs_triton(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
        and "triton_verdict" in _names(node.value)
        for node in tree.body
    )


def kernel_tests_without_the_fixture(source: str) -> list[str]:
    """Names of the test functions in ``source`` that run a Triton kernel but do not take ``kernel_device``."""
    tree = ast.parse(source)
    whole_module = _module_needs_triton(tree)
    missing = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_") or node.name in EXEMPT:
            continue
        marks = set().union(*(_names(d) for d in node.decorator_list)) if node.decorator_list else set()
        if "needs_gpu" in marks:
            continue
        runs_kernel = whole_module or "needs_triton" in marks or bool(_names(node) & KERNEL_ENTRY_POINTS)
        if runs_kernel and FIXTURE not in {a.arg for a in node.args.args}:
            missing.append(node.name)
    return missing


def test_every_test_that_runs_a_triton_kernel_takes_the_kernel_device():
    missing = {
        path.name: names
        for path in sorted(TESTS.glob("test_*.py"))
        if (names := kernel_tests_without_the_fixture(path.read_text()))
    }
    assert missing == {}


def test_the_check_finds_a_kernel_test_on_cpu_tensors():
    source = """
@needs_triton
def test_marked():
    decode_attention(q, k, v, blocked, config)

def test_by_entry_point():
    got = dequant_matmul(x, stored, scale, 8, config)

@needs_triton
def test_placed(kernel_device):
    decode_attention(q.to(kernel_device), k, v, blocked, config)

@needs_gpu
@needs_triton
def test_on_the_gpu_by_itself():
    decode_attention(q.cuda(), k.cuda(), v.cuda(), blocked.cuda(), config)

def test_no_kernel():
    assert 1 + 1 == 2
"""
    assert kernel_tests_without_the_fixture(source) == ["test_marked", "test_by_entry_point"]
    module_wide = "pytestmark = pytest.mark.skipif(not triton_verdict()[0], reason='')\ndef test_any():\n    pass\n"
    assert kernel_tests_without_the_fixture(module_wide) == ["test_any"]


def test_kernels_read_gpu_tensors_where_there_is_a_gpu_and_cpu_tensors_in_the_interpreter():
    assert kernel_device_for(True) == torch.device("cuda", 0)
    assert kernel_device_for(False) == torch.device("cpu")
    assert kernel_device_for(torch.cuda.is_available()) == KERNEL_DEVICE
    if KERNEL_DEVICE.type == "cpu":  # no GPU: the interpreter must be on, or the kernels would not run at all
        assert os.environ.get("TRITON_INTERPRET") == "1"
