"""Build a TensorRT engine from an ONNX export (TensorRT 10 Python API; docs/export.md#tensorrt-engines), with a cache.

Flow: parse the ONNX file from its path (so the external weight file is found beside it), a strongly typed network
(precision comes from the graph's dtypes and Q/DQ nodes, the only mode TensorRT 11 keeps), the planned profiles
(``plan.plan_profiles``), ``build_serialized_network`` with a progress monitor, and the bytes written atomically into
the cache under ``plan.cache_key``. A second build with the same key hard-links (or copies) the cached engine instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from glm_engine.backends.tensorrt.plan import (
    GpuIdentity,
    GraphIO,
    Limits,
    Profile,
    cache_key,
    engine_metadata,
    plan_profiles,
)
from glm_engine.checkpoint.atomic import fsync_file, staged_folder, write_atomically, write_durably
from glm_engine.errors import BackendError, InputError
from glm_engine.exported import (
    ENGINE_FILE,
    FILES_SECTION,
    GENAI_CONFIG_FILE,
    QuantTarget,
    check_files,
    file_records,
    file_sha256,
    read_exported,
    tokenizer_files,
)

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "glm-engine" / "tensorrt"
DEFAULT_WORKSPACE_BYTES = 8 << 30
Progress = Callable[[str, int, int], None]  # (phase, step, steps)
# INT4 weights (blocked DequantizeLinear) need TensorRT 10.0: its Developer Guide (10.0.1, revision history) "Added
# support for INT4 type under Supported Types", its release added INT4 weight-only quantization with block
# quantization, and its ONNX parser "support for INT4 quantization" (ONNX-TensorRT changelog, 10.0 EA; the operators
# table lists DequantizeLinear for INT8, FP8 and INT4, zero point zero). Older parsers reject the INT4 initializers;
# the TensorRT 10 Python API this module and the runner use needs 10 too (pyproject's tensorrt>=10).
MIN_TENSORRT = (10, 0)


def tensorrt_missing_reason() -> str | None:
    """Why TensorRT cannot build or run here, or None when it can (checked without touching a GPU context)."""
    import importlib.util

    import torch

    if importlib.util.find_spec("tensorrt") is None:
        return (
            "the tensorrt Python package is not installed (pip install tensorrt needs NVIDIA's package index; "
            "the lean runtime wheels have no Builder)"
        )
    too_old = tensorrt_version_reason(installed_tensorrt_version())
    if too_old is not None:
        return too_old
    if torch.version.cuda is None or not torch.cuda.is_available():
        return (
            "TensorRT needs a CUDA device and a CUDA build of torch; none found: install a CUDA build of torch and "
            "check the NVIDIA driver"
        )
    return None


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.0.1.6"`` -> ``(10, 0, 1, 6)``: the leading digits of each dot-separated part, up to the first part
    without any (``"10.8.0.post1"`` -> ``(10, 8, 0)``)."""
    parts = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def installed_tensorrt_version() -> str | None:
    """The installed TensorRT's version from the package metadata (without importing it, so without touching CUDA),
    or None when no distribution providing the ``tensorrt`` module is found (the runner checks the module's own
    ``__version__`` when it opens an engine)."""
    from importlib import metadata

    for name in metadata.packages_distributions().get("tensorrt", []):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def tensorrt_version_reason(version: str | None) -> str | None:
    """Why TensorRT ``version`` is too old for this backend, naming it and the version needed; None when it is
    recent enough or unknown."""
    if version is None or version_tuple(version)[:2] >= MIN_TENSORRT:
        return None
    needed = ".".join(map(str, MIN_TENSORRT))
    return (
        f"TensorRT {version} is installed; this backend needs TensorRT {needed} or newer (its name-based execution "
        f"API, and the INT4 weights of --quant int4 --target tensorrt): install tensorrt>={needed}"
    )


def check_tensorrt_version(version: str, description: dict, folder: str | Path) -> None:
    """A BackendError when TensorRT ``version`` is older than what this folder needs: 10.0 for any engine (the
    API used here), which is also the first to build the INT4 weights of ``--quant int4 --target tensorrt``."""
    if version_tuple(version)[:2] >= MIN_TENSORRT:
        return
    quant = description.get("quantization") or {}
    what = "its INT4 weights (blocked DequantizeLinear) need" if quant.get("bits") == 4 else "it needs"
    raise BackendError(
        f"TensorRT {version} cannot build or run {folder}: {what} TensorRT "
        f"{'.'.join(map(str, MIN_TENSORRT))} or newer; install tensorrt>=10 from NVIDIA's package index"
    )


def low_precision_norms(trt: object, network: object) -> list[str]:
    """The normalization layers of a parsed ``network`` whose input is not fp32: a strongly typed network computes
    them in their input type, which overflows on DeepNorm's hidden values in fp16 (``DecoderGraph.layernorm_dtype``;
    an export made with ``--target tensorrt`` has none)."""
    names = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type == trt.LayerType.NORMALIZATION and layer.get_input(0).dtype != trt.float32:
            names.append(layer.name)
    return names


@dataclass(frozen=True)
class BuildResult:
    folder: Path
    key: str
    cached: bool


def gpu_identity(device_index: int = 0) -> GpuIdentity:
    import torch

    props = torch.cuda.get_device_properties(device_index)
    return GpuIdentity(props.name, f"sm_{props.major}{props.minor}", props.multi_processor_count, props.total_memory)


def check_buildable(description: dict, onnx_dir: str | Path) -> None:
    """An InputError when the export's quantized linears are in a form TensorRT cannot parse (MatMulNBits)."""
    quant = description.get("quantization")
    if quant is not None and quant.get("target") != QuantTarget.tensorrt.value:
        raise InputError(
            f"{onnx_dir} holds {quant.get('op', 'quantized linears')} written for --target {quant.get('target')}, "
            "which TensorRT cannot parse: re-export it with `glm-engine export onnx ... --target tensorrt`"
        )


def build_engine(
    onnx_dir: str | Path,
    output: str | Path,
    limits: Limits,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    progress: Progress | None = None,
) -> BuildResult:
    """Build (or take from the cache) the engine for ``onnx_dir`` and write the folder ``output``: the engine, its
    ``genai_config.json`` (with the limits and key) and the tokenizer, so ``--backend tensorrt`` can run it."""
    info = read_exported(onnx_dir)
    check_buildable(info.description, onnx_dir)
    check_files(info.folder, info.description)  # a damaged export is named here, not by the ONNX parser
    reason = tensorrt_missing_reason()
    if reason is not None:
        raise BackendError(f"cannot build a TensorRT engine here: {reason}")
    import tensorrt as trt

    check_tensorrt_version(trt.__version__, info.description, onnx_dir)
    io = GraphIO.from_genai_config(info.description)
    profiles = plan_profiles(io, limits)
    key = cache_key(
        info.description["weights"]["sha256"],
        file_sha256(info.model_file),
        trt.__version__,
        gpu_identity(),
        profiles,
        workspace_bytes,
    )
    cached = cache_dir / f"{key}.engine"
    hit = cached.is_file()
    if not hit:
        cache_dir.mkdir(parents=True, exist_ok=True)
        serialized = _build(trt, info.model_file, profiles, workspace_bytes, progress)
        write_atomically(cached, lambda tmp: tmp.write_bytes(memoryview(serialized)))  # no second host copy
    with staged_folder(output, markers=(GENAI_CONFIG_FILE,)) as staging:  # what marks the folder complete: last
        place_engine(cached, staging / ENGINE_FILE)
        tokenizer = tokenizer_files(info.description)  # every file the family's tokenizer reads from the folder
        for name in tokenizer:
            shutil.copyfile(info.folder / name, staging / name)
            fsync_file(staging / name)
        metadata = engine_metadata(info.description, key, profiles, limits)
        metadata[FILES_SECTION] = file_records(staging, [ENGINE_FILE, *tokenizer])  # checked when the engine opens
        write_durably(staging / GENAI_CONFIG_FILE, json.dumps(metadata, indent=2) + "\n")
    return BuildResult(Path(output), key, hit)


def place_engine(cached: Path, destination: Path) -> bool:
    """Hard-link the cached engine to ``destination`` (no second copy of a multi-GB file), or copy it where links
    are not possible (another file system, no link support). True when linked."""
    try:
        os.link(cached, destination)
        return True
    except OSError:
        shutil.copyfile(cached, destination)
        fsync_file(destination)
        return False


def _build(trt: object, model_file: Path, profiles: list[Profile], workspace: int, progress: Progress | None) -> object:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {model_file}: {errors}")
    norms = low_precision_norms(trt, network)
    if norms:
        raise InputError(
            f"{model_file} normalizes {len(norms)} tensors below fp32 (first: {norms[0]}), which a strongly typed "
            "TensorRT network computes in that precision and DeepNorm's values overflow: re-export it with "
            "`glm-engine export onnx ... --target tensorrt` (LayerNorm in fp32)"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    for planned in profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in planned.shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    if progress is not None:
        config.progress_monitor = _monitor(trt, progress)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {model_file}; its log above says why")
    return serialized  # trt.IHostMemory: written through a memoryview, never copied into bytes


def _monitor(trt: object, progress: Progress) -> object:
    """A ``trt.IProgressMonitor`` forwarding each completed step (TensorRT calls it from its own threads)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = num_steps
            progress(phase_name, 0, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            progress(phase_name, step + 1, self.steps.get(phase_name, step + 1))
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            steps = self.steps.pop(phase_name, 0)
            progress(phase_name, steps, steps)

    return Monitor()
