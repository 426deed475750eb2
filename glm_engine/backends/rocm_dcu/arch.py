"""Which GPU a HIP build of torch is driving: AMD Instinct, Hygon DCU or another AMD part, from its architecture name.

Both vendors' torch builds report ``torch.cuda.get_device_properties(i).gcnArchName`` as ``gfxNNN`` plus target
features (``"gfx90a:sramecc+:xnack-"``). Hygon's DCUs descend from AMD's gfx9 (GCN/CDNA) line and share its ISA
naming, so the name alone is not always decisive: gfx906 is both AMD's MI50/MI60 and Hygon's Z100 family. The device
name settles that case where it says "DCU" or "Hygon" (``rocm-smi``/``hy-smi`` list the devices as DCUs); a gfx906
whose name says neither is labelled AMD, which changes only the label (neither gets fused SDPA). Facts behind the
table, from public sources (checked 2025):

- AMD (ROCm docs, LLVM AMDGPU processor table): gfx906 MI50/MI60, gfx908 MI100 (CDNA1), gfx90a MI210/MI250(X)
  (CDNA2), gfx942 MI300A/MI300X/MI325X (CDNA3), gfx950 MI350X/MI355X (CDNA4); gfx10xx/gfx11xx/gfx12xx are RDNA
  (Radeon) parts.
- Hygon: gfx906 for the Z100/Z100L (a Z100L's ``rocminfo`` in gpustack/gpustack#1508 and the question in
  nlzy/vllm-gfx906#61); gfx928 for the K100 family ("海光DCU K100A (gfx928)", kvcache-ai/ktransformers#984);
  gfx936 as a Hygon DCU target confirmed on hardware (kokkos/kokkos#9403, which names no product; it is
  reported elsewhere as the K100_AI/BW generation).
- Uncertain, not confirmed by a public source we could find: gfx926 (said to be a K100 variant) and gfx938 (said to be
  BW1000). They are listed as Hygon because no AMD product uses those numbers, and marked ``confirmed=False``.
- Fused attention in ROCm torch: SDPA's flash/memory-efficient kernels come from AOTriton, built for gfx90a and
  gfx942 (pytorch/pytorch#141958: "flash attention backend via AOTriton for gfx90a and gfx942, but not gfx908"),
  and gfx950 since AOTriton 0.9.2b/0.10b (ROCm/pytorch#2074, pytorch/pytorch#156499). DTK builds for DCUs ship
  their own attention libraries whose coverage we cannot verify, so DCUs take the math path.
- bf16 arithmetic (``BF16_ARCHES``): the ROCm "Data types and precision support" page lists bfloat16 on the compute
  units and matrix cores of MI100, MI200 and MI300 (gfx908, gfx90a, gfx94x) and MI350 (gfx950); rocWMMA's supported
  architectures add bf16 WMMA on RDNA3 (gfx11xx) and RDNA4 (gfx12xx). gfx906 (MI50/MI60, Z100) has no bf16
  instructions at all, yet ``torch.cuda.is_bf16_supported()`` is True on every HIP build, so the arch decides. No
  public source we found states bf16 arithmetic for a Hygon DCU, so none is offered bf16.
- Triton targets (``triton_target``): upstream Triton's AMD backend names the ISA families it compiles for
  (``TargetFeatures::getISAFamily``): CDNA1-4 (gfx908, gfx90a, gfx942, gfx950), RDNA3/RDNA4 (gfx11xx, gfx12xx), and
  gfx906 only since Triton 3.8.0 (triton-lang/triton#9628, "[AMD] Add GCN5.1 / gfx906 target"; its dots are
  FMA-lowered, no MFMA). RDNA1/RDNA2 have a family name there too, but AMD's Triton team does not support them
  (ROCm/triton#904), so they are not assumed. Anything else, Hygon's gfx92x/gfx93x included, is an unknown target to
  upstream Triton. Hygon's own Triton build carries a separate ``hcu`` compiler backend (as published in FlagTree's
  ``third_party/hcu``, which maps gfx928 and gfx936 to its CDNA2 family), so a DCU runs the kernels only when that
  backend is installed.
- LDS per workgroup (``lds_bytes``): 64 KiB on MI50, MI100, MI200 and MI300, 160 KiB on MI350 (AMD's "GPU
  specifications" table); 64 KiB is the most one RDNA workgroup may allocate and is assumed for Hygon's gfx9-derived
  DCUs (no public figure found).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class Vendor(str, Enum):
    AMD_INSTINCT = "AMD Instinct"
    HYGON_DCU = "Hygon DCU"
    AMD_OTHER = "AMD (not Instinct)"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ArchFacts:
    """What one gfx target is, as far as this backend's choices go."""

    vendor: Vendor
    family: str
    confirmed: bool = True  # False: the mapping rests on unverified reports (see the module docstring)


# gfx target -> facts. gfx906 is listed as AMD and re-classified as Hygon when the device name says DCU.
ARCHES: dict[str, ArchFacts] = {
    "gfx906": ArchFacts(Vendor.AMD_INSTINCT, "MI50/MI60 (Vega 20)"),
    "gfx908": ArchFacts(Vendor.AMD_INSTINCT, "MI100 (CDNA1)"),
    "gfx90a": ArchFacts(Vendor.AMD_INSTINCT, "MI200 (CDNA2)"),
    "gfx942": ArchFacts(Vendor.AMD_INSTINCT, "MI300 (CDNA3)"),
    "gfx950": ArchFacts(Vendor.AMD_INSTINCT, "MI350 (CDNA4)"),
    "gfx926": ArchFacts(Vendor.HYGON_DCU, "K100 family", confirmed=False),
    "gfx928": ArchFacts(Vendor.HYGON_DCU, "K100 family"),
    "gfx936": ArchFacts(Vendor.HYGON_DCU, "K100_AI/BW generation"),
    "gfx938": ArchFacts(Vendor.HYGON_DCU, "BW family", confirmed=False),
}
HYGON_GFX906 = ArchFacts(Vendor.HYGON_DCU, "Z100 family")

# Archs whose ROCm torch ships SDPA fused kernels (AOTriton); see the module docstring for sources.
FUSED_SDPA_ARCHES = frozenset({"gfx90a", "gfx942", "gfx950"})

# Archs with bf16 arithmetic; see the module docstring. RDNA3/RDNA4 are matched by prefix below.
BF16_ARCHES = frozenset({"gfx908", "gfx90a", "gfx940", "gfx941", "gfx942", "gfx950"})
BF16_PREFIXES = ("gfx11", "gfx12")

# Archs upstream Triton's AMD backend compiles for, with the first Triton release that does (None: any release this
# project supports). RDNA3/RDNA4 parts are matched by prefix below.
TRITON_ARCHES: dict[str, tuple[int, int] | None] = {
    "gfx906": (3, 8),
    "gfx908": None,
    "gfx90a": None,
    "gfx942": None,
    "gfx950": None,
}
TRITON_RDNA_PREFIXES = ("gfx11", "gfx12")

KIB = 1024
LDS_BYTES = {"gfx950": 160 * KIB}  # every other arch: DEFAULT_LDS_BYTES
DEFAULT_LDS_BYTES = 64 * KIB

_GFX = re.compile(r"^(gfx[0-9a-f]+)", re.IGNORECASE)


def base_arch(gcn_arch_name: str) -> str:
    """``"gfx90a:sramecc+:xnack-"`` -> ``"gfx90a"``; "" when the name is not a gfx target."""
    match = _GFX.match(gcn_arch_name.strip())
    return match.group(1).lower() if match else ""


def is_dcu_name(device_name: str) -> bool:
    """Hygon's DTK names its devices with "DCU" (and Hygon's own product names); AMD's never do."""
    upper = device_name.upper()
    return "DCU" in upper or "HYGON" in upper


def classify(gcn_arch_name: str, device_name: str = "") -> ArchFacts:
    """Vendor and family of a HIP device from its ``gcnArchName`` and, where the arch is shared, its name."""
    arch = base_arch(gcn_arch_name)
    if is_dcu_name(device_name):
        facts = ARCHES.get(arch)
        if arch == "gfx906":
            return HYGON_GFX906
        if facts is not None and facts.vendor is Vendor.HYGON_DCU:
            return facts
        return ArchFacts(Vendor.HYGON_DCU, f"unlisted DCU ({arch or gcn_arch_name})", confirmed=False)
    if arch in ARCHES:
        return ARCHES[arch]
    if re.match(r"^gfx1[0-2]", arch):
        return ArchFacts(Vendor.AMD_OTHER, "Radeon (RDNA)")
    return ArchFacts(Vendor.UNKNOWN, arch or gcn_arch_name or "no architecture name", confirmed=False)


def describe(gcn_arch_name: str, device_name: str = "") -> str:
    """One line for ``glm-engine backends``: ``"gfx90a, AMD Instinct MI200 (CDNA2)"``."""
    facts = classify(gcn_arch_name, device_name)
    arch = base_arch(gcn_arch_name) or gcn_arch_name
    note = "" if facts.confirmed else " (mapping unconfirmed)"
    return f"{arch}, {facts.vendor.value} {facts.family}{note}"


def has_fused_sdpa(gcn_arch_name: str, device_name: str = "") -> bool:
    """Whether ROCm torch's SDPA has fused (AOTriton) kernels for this device; DCUs are never assumed to."""
    if classify(gcn_arch_name, device_name).vendor is Vendor.HYGON_DCU:
        return False
    return base_arch(gcn_arch_name) in FUSED_SDPA_ARCHES


def has_bf16(gcn_arch_name: str, device_name: str = "") -> bool:
    """Whether the device computes in bf16 (instructions for it, not emulation through fp32)."""
    if classify(gcn_arch_name, device_name).vendor is Vendor.HYGON_DCU:
        return False
    arch = base_arch(gcn_arch_name)
    return arch in BF16_ARCHES or arch.startswith(BF16_PREFIXES)


def bf16_reason(gcn_arch_name: str, device_name: str = "") -> str:
    """Why a device gets no bf16, in words a user can act on ("" when it has bf16)."""
    if has_bf16(gcn_arch_name, device_name):
        return ""
    where = describe(gcn_arch_name, device_name)
    if classify(gcn_arch_name, device_name).vendor is Vendor.HYGON_DCU:
        return f"{where}: no public source confirms bf16 arithmetic on Hygon DCUs; use fp16"
    return f"{where} has no bf16 arithmetic (bf16 needs gfx908/gfx90a/gfx94x/gfx950 or RDNA3+); use fp16"


def parse_version(version: str) -> tuple[int, int]:
    """``"3.8.0+git1234"`` -> ``(3, 8)``; ``(0, 0)`` when the string does not start with two numbers."""
    match = re.match(r"^(\d+)\.(\d+)", version.strip())
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def triton_target(gcn_arch_name: str, device_name: str, triton_version: str, hygon_backend: bool) -> tuple[bool, str]:
    """``(ok, reason)``: whether the installed Triton compiles kernels for this device.

    ``triton_version`` is ``triton.__version__``; ``hygon_backend`` says whether Triton has Hygon's ``hcu`` compiler
    backend. The reason says what to do when it does not (see the module docstring for the facts)."""
    where = describe(gcn_arch_name, device_name)
    arch = base_arch(gcn_arch_name)
    if classify(gcn_arch_name, device_name).vendor is Vendor.HYGON_DCU:
        if hygon_backend:
            return True, f"Triton with Hygon's hcu backend compiles for {where}"
        return False, (
            f"this Triton has no Hygon hcu backend, and upstream Triton is not known to run on {where}; install the "
            "Triton build from Hygon's DTK to use the Triton kernels"
        )
    if arch in TRITON_ARCHES or arch.startswith(TRITON_RDNA_PREFIXES):
        needed = TRITON_ARCHES.get(arch)
        if needed is not None and parse_version(triton_version) < needed:
            return False, (
                f"Triton {triton_version} does not target {where}; Triton {needed[0]}.{needed[1]} or newer does "
                "(triton-lang/triton#9628)"
            )
        return True, f"Triton {triton_version} targets {where}"
    return False, f"Triton's AMD backend does not target {where}"


def lds_bytes(gcn_arch_name: str) -> int:
    """Local data share (shared memory) one workgroup may use on this arch."""
    return LDS_BYTES.get(base_arch(gcn_arch_name), DEFAULT_LDS_BYTES)
