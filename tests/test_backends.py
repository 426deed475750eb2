"""The backend registry: built-ins, availability with reasons, capability queries, plugins, auto selection."""

import re
import sys
import types

import pytest
import torch

from glm_engine.backends import registry as registry_module
from glm_engine.backends.base import BackendKind, OpLevelBackend, Verdict, parse_dtype
from glm_engine.backends.cpu import CpuBackend
from glm_engine.backends.registry import BackendRegistry, op_table_for
from glm_engine.errors import BackendError, InputError
from glm_engine.ops.interface import Op
from glm_engine.ops.torch_ops import TorchOps
from glm_engine.quant.formats import QuantFormat

BUILTINS = ["cpu", "cuda", "rocm_dcu", "ascend", "tensorrt", "onnxruntime"]
# What an unavailable built-in's reason must name: the runtime or package that is missing, and what to do about it.
MISSING_PIECE = {
    "cuda": "CUDA",
    "rocm_dcu": "HIP",
    "ascend": "torch_npu",
    "tensorrt": "TensorRT",
    "onnxruntime": "onnxruntime",
}
REMEDY = re.compile(r"install|check|use --backend")


def test_every_builtin_backend_is_listed_and_answers_availability():
    reg = BackendRegistry()
    assert reg.names()[: len(BUILTINS)] == BUILTINS
    for backend in reg.all():
        verdict = backend.availability()
        assert isinstance(verdict, Verdict) and verdict.reason, backend.name
        if not verdict.ok and backend.name in MISSING_PIECE:  # unavailable: says what is missing and what to do
            assert MISSING_PIECE[backend.name].lower() in verdict.reason.lower(), verdict.reason
            assert REMEDY.search(verdict.reason), verdict.reason


def test_cpu_is_available_and_declares_its_abilities():
    cpu = BackendRegistry().get("cpu")
    assert cpu.availability().ok
    assert cpu.kind is BackendKind.OP_LEVEL and cpu.dist_backend == "gloo"
    assert cpu.supported_dtypes() == (torch.float32, torch.bfloat16, torch.float16)
    assert cpu.devices()[0].total_memory_bytes > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reasons given on a machine without a GPU")
def test_unavailable_backends_say_precisely_why():
    reg = BackendRegistry()
    assert (
        "torch.version.cuda is None" in reg.get("cuda").availability().reason
        or "no CUDA device" in reg.get("cuda").availability().reason
    )
    assert "torch.version.hip is None" in reg.get("rocm_dcu").availability().reason
    assert "torch_npu" in reg.get("ascend").availability().reason
    assert "tensorrt" in reg.get("tensorrt").availability().reason
    assert reg.get("tensorrt").kind is BackendKind.GRAPH_LEVEL


class NoKernelsBackend(CpuBackend):
    def quant_formats(self) -> tuple[QuantFormat, ...]:
        return ()


def test_supports_answers_yes_or_no_with_a_reason():
    cpu = BackendRegistry().get("cpu")
    assert cpu.supports(Op.ATTENTION, torch.float32)
    fp16_linear = cpu.supports(Op.LINEAR, torch.float16)
    assert fp16_linear.ok and "fp32" in fp16_linear.reason
    no_fp64 = cpu.supports(Op.LINEAR, torch.float64)
    assert not no_fp64.ok and "fp32, bf16, fp16" in no_fp64.reason
    no_quant = NoKernelsBackend().supports(Op.LINEAR, torch.float32, "int4-rowwise")
    assert not no_quant.ok and "no kernels for int4-rowwise weights (formats: none)" in no_quant.reason
    unknown = cpu.supports(Op.LINEAR, torch.float32, "int3-magic")
    assert not unknown.ok and "known formats: int8-rowwise" in unknown.reason


def test_op_table_refuses_unsupported_dtypes_before_running():
    cpu = BackendRegistry().get("cpu")
    with pytest.raises(BackendError, match="cannot run this model"):
        op_table_for(cpu, torch.float64)


def test_auto_picks_the_best_available_backend_and_says_why():
    backend, why = BackendRegistry().auto()
    if not torch.cuda.is_available():
        assert backend.name == "cpu"
    assert backend.name in why


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(BackendError, match="known backends: cpu, cuda"):
        BackendRegistry().get("tpu")


def test_requesting_an_unavailable_backend_explains():
    reg = BackendRegistry()
    reg.register("never", type("Never", (FakeBackend,), {"name": "never", "available": False}))
    with pytest.raises(BackendError, match="not available here: switched off for the test"):
        reg.resolve("never")


class FakeBackend(OpLevelBackend):
    """A third-party backend as a plugin would ship it."""

    name = "fake"
    device_type = "cpu"
    dist_backend = "gloo"
    priority = 100
    available = True

    def availability(self) -> Verdict:
        return Verdict(self.available, "" if self.available else "switched off for the test")

    def supported_dtypes(self):
        return (torch.float32,)

    def op_table(self, dtype, device_index=0):
        return TorchOps(torch.device("cpu"), dtype)


class FakeEntryPoint:
    def __init__(self, name, target, dist="fake-plugin"):
        self.name, self._target = name, target
        self.value = f"{dist}:thing"
        self.dist = types.SimpleNamespace(name=dist)

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def test_plugins_register_through_entry_points_and_broken_ones_report_why(monkeypatch):
    entries = [
        FakeEntryPoint("fake", FakeBackend),
        FakeEntryPoint("broken", ImportError("libfoo.so missing")),
        FakeEntryPoint("cpu", FakeBackend),
    ]
    monkeypatch.setattr(
        registry_module, "entry_points", lambda group: entries if group == "glm_engine.backends" else []
    )
    reg = BackendRegistry()
    assert reg.names() == [*BUILTINS, "fake", "broken"]  # a plugin cannot shadow a built-in
    assert reg.source("fake") == "plugin fake-plugin"
    assert reg.get("fake").availability().ok
    broken = reg.get("broken").availability()
    assert not broken.ok and "libfoo.so missing" in broken.reason
    backend, why = reg.auto()  # the plugin's priority beats cpu
    assert backend.name == "fake" and "fake" in why


def test_a_failing_vendor_module_does_not_break_the_registry(monkeypatch):
    monkeypatch.setitem(registry_module.BUILTIN_BACKENDS, "ascend", "glm_engine_missing_module:Nothing")
    reg = BackendRegistry()
    verdict = reg.get("ascend").availability()
    assert not verdict.ok and "failed to load" in verdict.reason
    assert reg.get("cpu").availability().ok


def test_importing_the_package_imports_no_vendor_sdk():
    assert "torch_npu" not in sys.modules and "tensorrt" not in sys.modules


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("fp16", torch.float16),
        ("float16", torch.float16),
        ("Half", torch.float16),
        ("BF16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
        ("float32", torch.float32),
        ("torch.float32", torch.float32),
        (" fp32 ", torch.float32),
    ],
)
def test_dtype_names_take_the_usual_spellings(name, dtype):
    assert parse_dtype(name) is dtype


def test_an_unknown_dtype_lists_the_names():
    with pytest.raises(InputError, match=r"unknown dtype 'float64'; choose one of fp32, bf16, fp16 \(or float32"):
        parse_dtype("float64")
