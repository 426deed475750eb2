"""Ascend backend declaration: available when ``torch_npu`` imports (CANN present) and sees an NPU.

``torch_npu`` is imported here only, on demand: without CANN it fails to import, and that failure is reported as the
reason instead of breaking ``import glm_engine``. Importing it also registers the ``npu`` device type (``torch.npu``
is ``torch_npu.npu``) and the ``hccl`` process-group backend that tensor parallelism names: the communicator asks
for :meth:`devices` (so imports torch_npu) before it calls ``init_process_group(backend="hccl")``.

Device facts (torch_npu API reference, "NPU Device" and ``torch_npu.npu.utils.get_cann_version``):
``torch_npu.npu.get_device_name(i)`` is the SoC name, ``get_device_properties(i).total_memory`` the HBM bytes,
``torch_npu.npu.mem_get_info(i)`` the free and total bytes (``torch.npu`` mirrors ``torch.cuda``'s API),
``torch_npu.npu.get_soc_version()`` the SoC code of the current device, and the CANN version comes from
``torch_npu.npu.utils.get_cann_version(module="CANN")`` (newer torch_npu) or ``torch.version.cann`` (set by torch_npu).
https://gitcode.com/Ascend/op-plugin/blob/master/docs/context/NPU-Device.md,
https://gitcode.com/Ascend/op-plugin/blob/master/docs/context/torch_npu-npu-utils-get_cann_version.md

Only this process's own NPU is queried (:func:`own_device`: ``LOCAL_RANK`` under a launcher, else 0); the others are
counted with ``device_count()`` and listed without a query. The per-device queries need the device's runtime (a
memory query creates a context on it, as on CUDA), so describing every NPU from every rank, and from the launcher
that starts them, would put tp + 1 contexts on each NPU before any rank picks its own. A node's NPUs are taken to be
one model, so the SoC family of the own device stands for the node's (its dtypes, its kernels).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import torch

from glm_engine.backends.ascend.attention import choose_kernel, grouped_kv_reason
from glm_engine.backends.ascend.fused import rmsnorm_reason, swiglu_reason
from glm_engine.backends.ascend.ops import AscendOps
from glm_engine.backends.ascend.soc import SocFamily, classify_soc, has_bf16
from glm_engine.backends.base import DeviceInfo, OpLevelBackend, Verdict
from glm_engine.ops.interface import Op, OpTable
from glm_engine.quant.formats import QuantFormat


def _import_torch_npu() -> tuple[ModuleType | None, str]:
    """The torch_npu module, or None and why not."""
    if importlib.util.find_spec("torch_npu") is None:
        return None, (
            "torch_npu is not installed (install the torch_npu wheel that matches your torch version and CANN toolkit)"
        )
    try:
        return importlib.import_module("torch_npu"), ""
    except Exception as exc:  # missing CANN libraries surface as OSError/ImportError/RuntimeError
        return None, (
            f"torch_npu is installed but failed to import ({type(exc).__name__}: {exc}); install CANN "
            "and source its set_env.sh"
        )


def cann_version(npu: ModuleType | object) -> str:
    """The CANN version torch_npu reports, or "unknown"."""
    utils = getattr(getattr(npu, "npu", None), "utils", None)
    getter = getattr(utils, "get_cann_version", None)
    if getter is not None:
        try:
            return str(getter(module="CANN"))
        except Exception:  # older CANN layouts; fall through to the version torch_npu records
            pass
    return str(getattr(torch.version, "cann", None) or "unknown")


def soc_version(npu: ModuleType | object) -> int | None:
    """``torch_npu.npu.get_soc_version()`` (the current device's SoC code), or None where this torch_npu lacks it."""
    getter = getattr(getattr(npu, "npu", None), "get_soc_version", None)
    try:
        return int(getter()) if getter is not None else None
    except Exception:
        return None


UNQUERIED = "Ascend NPU (not queried)"  # the name of a device this process does not use


def own_device() -> int:
    """The NPU this process computes on: ``LOCAL_RANK`` (a rank under torchrun or glm-engine's launcher), else 0."""
    try:
        return max(0, int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        return 0


def describe_npu(npu: ModuleType | object, index: int) -> DeviceInfo:
    """SoC name, total and free memory, family, SoC code and CANN version of NPU ``index`` (touches that device)."""
    device = npu.npu
    name = str(device.get_device_name(index))
    memory = getattr(device.get_device_properties(index), "total_memory", None)
    free = None
    mem_get_info = getattr(device, "mem_get_info", None)
    if mem_get_info is not None:
        try:
            free, memory = mem_get_info(index)
        except Exception:  # an older torch_npu or a runtime refusing the query: total memory from the properties
            free = None
    family = classify_soc(name)
    code = soc_version(npu) if family is SocFamily.UNKNOWN else None  # the current device's; only when needed
    family = classify_soc(name, code)
    detail = f"{family.value}; SoC code {code if code is not None else '-'}; CANN {cann_version(npu)}"
    return DeviceInfo(index, name, memory, detail, free, name)


def describe_npus(npu: ModuleType | object, own: int | None = None) -> list[DeviceInfo]:
    """Every visible NPU, counted without touching any; only ``own`` (default :func:`own_device`) is queried."""
    own = own_device() if own is None else own
    infos = []
    for index in range(npu.npu.device_count()):
        if index == own:
            infos.append(describe_npu(npu, index))
        else:
            infos.append(DeviceInfo(index, UNQUERIED, detail=f"not queried from this process (it runs on npu:{own})"))
    return infos


def _attention_paths(npu: ModuleType | object | None, family: SocFamily, dtype: torch.dtype) -> str:
    """ "prefill: KERNEL; decode: KERNEL", each kernel or "portable (why)"."""
    parts = []
    for phase, decode in (("prefill", False), ("decode", True)):
        kernel, why = choose_kernel(npu, family, dtype, decode)
        parts.append(f"{phase}: {kernel.value if kernel else f'portable ({why})'}")
    return ", ".join(parts)


# A grouped model's shape for the notes: ChatGLM2/3 and GLM-4 have 32 query heads over 2 key/value heads.
NOTE_HEADS, NOTE_GROUPS = 32, 2
DOCUMENTED_FAMILIES = (SocFamily.ATLAS_A2, SocFamily.ATLAS_A3, SocFamily.ATLAS_INFERENCE)


def _grouped_paths(npu: ModuleType | object | None, family: SocFamily, dtype: torch.dtype) -> str:
    """ "prefill: KERNEL (how grouped heads are read); decode: ..." for grouped key/value heads."""
    parts = []
    for phase, decode in (("prefill", False), ("decode", True)):
        kernel, why = choose_kernel(npu, family, dtype, decode)
        if kernel is None:
            parts.append(f"{phase}: portable, key/value heads repeated ({why})")
            continue
        repeat = grouped_kv_reason(kernel, family, NOTE_HEADS, NOTE_GROUPS)
        how = f"key/value heads repeated: {repeat}" if repeat else "grouped heads read in place"
        parts.append(f"{phase}: {kernel.value}, {how}")
    return ", ".join(parts)


def _fused_note(op: Op, npu: ModuleType | object | None, family: SocFamily, dtype: torch.dtype) -> str:
    """How RMSNorm or SwiGLU runs: the fused kernel, or portable with the reason."""
    why = (rmsnorm_reason if op is Op.RMSNORM else swiglu_reason)(npu, family, dtype)
    return f"portable ({why})" if why else ("npu_rms_norm" if op is Op.RMSNORM else "npu_swiglu")


class AscendBackend(OpLevelBackend):
    name = "ascend"
    device_type = "npu"
    dist_backend = "hccl"
    priority = 30
    description = "Huawei Ascend NPUs through torch_npu"

    def __init__(self, npu: ModuleType | object | None = None) -> None:
        self._npu = npu  # tests pass a stand-in; otherwise torch_npu is imported on first need

    def _module(self) -> tuple[ModuleType | object | None, str]:
        if self._npu is not None:
            return self._npu, ""
        return _import_torch_npu()

    def availability(self) -> Verdict:
        module, why = self._module()
        if module is None:
            return Verdict(False, why)
        if not module.npu.is_available():
            return Verdict(
                False,
                "torch_npu sees no Ascend NPU (torch.npu.is_available() is False); check the "
                "driver and ASCEND_RT_VISIBLE_DEVICES",
            )
        return Verdict(True, f"{module.npu.device_count()} NPU(s), CANN {cann_version(module)}")

    def devices(self) -> list[DeviceInfo]:
        if not self.availability():
            return []
        module, _ = self._module()
        return describe_npus(module)

    def families(self) -> list[SocFamily]:
        """The SoC family of this process's own NPU, standing for the node's (empty when unavailable)."""
        if not self.availability():
            return []
        return [self.family(own_device())]

    def family(self, device_index: int = 0) -> SocFamily:
        """The SoC family of NPU ``device_index`` (the device an op table for it runs on: querying it touches no
        other NPU); UNKNOWN beyond the visible devices."""
        if not self.availability():
            return SocFamily.UNKNOWN
        module, _ = self._module()
        if device_index >= module.npu.device_count():
            return SocFamily.UNKNOWN
        name = str(module.npu.get_device_name(device_index))
        family = classify_soc(name)
        return family if family is not SocFamily.UNKNOWN else classify_soc(name, soc_version(module))

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        families = self.families()
        if families and all(has_bf16(f) for f in families):
            return (torch.float16, torch.bfloat16, torch.float32)
        return (torch.float16, torch.float32)

    def supports(self, op: Op, dtype: torch.dtype, quant_format: QuantFormat | str | None = None) -> Verdict:
        if dtype == torch.bfloat16:
            without = sorted({f.value for f in self.families() if not has_bf16(f)})
            if without:
                return Verdict(False, f"bf16 is documented for Atlas A2/A3 only; this node has {', '.join(without)}")
        return super().supports(op, dtype, quant_format)

    def support_note(self, op: Op, dtype: torch.dtype, quant_format: QuantFormat | None) -> str:
        family = self.family(own_device())
        module, _ = self._module()
        per_family = {
            Op.ATTENTION: _attention_paths,
            Op.GROUPED_ATTENTION: _grouped_paths,
            Op.RMSNORM: lambda npu, f, d: _fused_note(Op.RMSNORM, npu, f, d),
            Op.SWIGLU: lambda npu, f, d: _fused_note(Op.SWIGLU, npu, f, d),
        }
        if op in per_family and family is SocFamily.UNKNOWN and not self.availability():
            return "no NPU here; documented paths per SoC: " + "; ".join(
                f"{f.value}: {per_family[op](None, f, dtype)}" for f in DOCUMENTED_FAMILIES
            )
        if op in per_family:
            return per_family[op](module, family, dtype)
        if op is Op.ROTARY:
            if family is SocFamily.UNKNOWN:
                return "portable (npu_rotary_mul's constraints are documented per product; SoC not known here)"
            return (
                "torch_npu.npu_rotary_mul where its documented limits for the current compile mode hold (per-row "
                "positions need jit_compile=False), else portable"
            )
        if op is Op.LAYERNORM:
            return "F.layer_norm (native on NPU)"
        if op is not Op.LINEAR or quant_format is None:
            return ""
        if dtype not in (torch.float16, torch.bfloat16):
            return f"dequantized per product (npu_weight_quant_batchmatmul takes fp16/bf16 activations, not {dtype})"
        groupwise = quant_format in (QuantFormat.INT8_GROUPWISE, QuantFormat.INT4_GROUPWISE)
        int4 = quant_format in (QuantFormat.INT4_ROWWISE, QuantFormat.INT4_GROUPWISE)
        if family is SocFamily.ATLAS_INFERENCE and (groupwise or int4 or dtype != torch.float16):
            return (
                f"dequantized per product (on {family.value} npu_weight_quant_batchmatmul runs fp16 x "
                "per-channel INT8 only)"
            )
        if family in (SocFamily.ATLAS_TRAINING, SocFamily.UNKNOWN) and self.availability():
            return f"dequantized per product (npu_weight_quant_batchmatmul is not documented for {family.value})"
        note = "torch_npu.npu_weight_quant_batchmatmul"
        if groupwise:
            note += " (groups a multiple of 32 columns; per-group needs Atlas A2/A3)"
        if int4:
            note += ", INT4 re-packed by npu_convert_weight_to_int4pack at load (Atlas A2/A3)"
        return note

    def op_table(self, dtype: torch.dtype, device_index: int = 0) -> OpTable:
        return AscendOps(self.device(device_index), dtype, self._npu, self.family(device_index))
