"""Which Ascend SoC family a device is, from its name, and what torch_npu documents for each family.

``torch.npu.get_device_name(i)`` returns the SoC name (``"Ascend910B2"``, ``"Ascend910_9391"``, ``"Ascend310P3"``), and
``torch_npu.npu.get_soc_version()`` an integer code for the current device. The names below are the ones torch_npu's
own device table knows (``Ascend910B1/B2/B2C/B3/B4/B4-1`` are Atlas A2, ``Ascend910_93xx`` Atlas A3, ``Ascend310P*``
the Atlas inference series, and the bare ``Ascend910``/``910A``/``910B``/``910ProA``/``910ProB``/``910PremiumA`` the
first-generation Atlas training series: note the bare ``Ascend910B`` is *first* generation, not A2). The integer codes
are only a cross-check (220-225 A2, 250-255 A3, 200-209 the 310P family, as vllm-ascend maps them).

torch_npu's per-op documentation names product families, not SoC names; :class:`SocFamily` uses those families:
"Atlas A2 训练系列产品/Atlas 800I A2 推理产品", "Atlas A3 训练系列产品/Atlas A3 推理系列产品",
"Atlas 推理系列加速卡产品" (Atlas 300I Duo / 300I Pro / 300V, with a 310P) and "Atlas 训练系列产品" (first-gen 910).
"""

from __future__ import annotations

import re
from enum import Enum


class SocFamily(str, Enum):
    """Product families as torch_npu's API reference lists them under "支持的型号" (supported products)."""

    ATLAS_A2 = "Atlas A2 (Ascend 910B)"
    ATLAS_A3 = "Atlas A3 (Ascend 910C / 910_93)"
    ATLAS_INFERENCE = "Atlas inference series (Ascend 310P)"
    ATLAS_TRAINING = "Atlas training series (first-generation Ascend 910)"
    UNKNOWN = "unknown Ascend SoC"


# Full-name patterns, checked in order (the first-generation bare names before the A2 B<digit> names).
_NAME_PATTERNS: tuple[tuple[re.Pattern[str], SocFamily], ...] = (
    (re.compile(r"^Ascend910(A|B|ProA|ProB|PremiumA)?$"), SocFamily.ATLAS_TRAINING),
    (re.compile(r"^Ascend910B\d[A-Z]?(-\d+)?$"), SocFamily.ATLAS_A2),
    (re.compile(r"^Ascend910_93\d\d$"), SocFamily.ATLAS_A3),
    (re.compile(r"^Ascend310P\d*$"), SocFamily.ATLAS_INFERENCE),
)
# torch_npu.npu.get_soc_version() ranges (the SocVersion enum) per family; only used when the name is not recognised.
_SOC_VERSION_RANGES: tuple[tuple[range, SocFamily], ...] = (
    (range(100, 110), SocFamily.ATLAS_TRAINING),
    (range(200, 210), SocFamily.ATLAS_INFERENCE),
    (range(220, 226), SocFamily.ATLAS_A2),
    (range(250, 256), SocFamily.ATLAS_A3),
)


def classify_soc(name: str, soc_version: int | None = None) -> SocFamily:
    """The family of SoC ``name`` (as ``torch.npu.get_device_name`` spells it), else of ``soc_version``, else
    UNKNOWN."""
    cleaned = name.strip()
    for pattern, family in _NAME_PATTERNS:
        if pattern.match(cleaned):
            return family
    if soc_version is not None:
        for codes, family in _SOC_VERSION_RANGES:
            if soc_version in codes:
                return family
    return SocFamily.UNKNOWN


def has_bf16(family: SocFamily) -> bool:
    """bf16 tensors in the fused ops we call: documented for Atlas A2/A3 only (310P lists float16 only)."""
    return family in (SocFamily.ATLAS_A2, SocFamily.ATLAS_A3)


def has_weight_quant_matmul(family: SocFamily) -> bool:
    """``npu_weight_quant_batchmatmul`` is documented for Atlas A2, A3 and the Atlas inference series only."""
    return family in (SocFamily.ATLAS_A2, SocFamily.ATLAS_A3, SocFamily.ATLAS_INFERENCE)


def has_groupwise_weight_quant(family: SocFamily) -> bool:
    """Per-group scales and INT4 (int32-packed) weights in ``npu_weight_quant_batchmatmul``: Atlas A2/A3.

    The Atlas inference series documents fp16 ``x`` and int8 ``weight`` only (no int32-packed INT4). For its
    per-group scales the 7.0.0 reference says A2/A3 only while op-plugin's current page lists a per-group
    ``antiquant_offset`` shape for it too; unverified, so treated as unsupported (the weight is dequantized)."""
    return family in (SocFamily.ATLAS_A2, SocFamily.ATLAS_A3)
