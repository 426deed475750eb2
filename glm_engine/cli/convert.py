"""``glm-engine convert-tp`` (the reference's tools/convert_tp.py, any TP to any TP), ``glm-engine convert``
(SAT <-> native safetensors) and ``glm-engine quantize`` (INT8/INT4 into the native format)."""

from __future__ import annotations

import math
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from glm_engine.checkpoint import convert as conversions
from glm_engine.checkpoint import open_checkpoint
from glm_engine.cli.errors import user_errors
from glm_engine.cli.progress import progress_bar
from glm_engine.engine.plan import check_quant_fits
from glm_engine.engine.source import resolve_config
from glm_engine.errors import InputError
from glm_engine.model.glm130b.config import GLMConfig
from glm_engine.model.glm130b.weights import weight_layout
from glm_engine.quant.spec import QuantSpec

GIB = 2**30


def convert_tp(
    input_folder: Annotated[
        Path, typer.Option("--input-folder", help="Checkpoint to read (SAT at any TP, or native).")
    ],
    output_folder: Annotated[Path, typer.Option("--output-folder", help="New folder for the SAT shards.")],
    target_tp: Annotated[int, typer.Option("--target-tp", help="Tensor-parallel degree to write.")] = 4,
    quantization_bit_width: Annotated[
        int | None,
        typer.Option("--quantization-bit-width", help="Quantize the linears to 4 or 8 bits on each rank's shard."),
    ] = None,
    config: Annotated[str | None, typer.Option(help="Preset name or config.json, if the folder has none.")] = None,
) -> None:
    """Re-shard a checkpoint to another tensor-parallel degree in the reference's SAT layout."""
    with user_errors():
        if quantization_bit_width not in (None, 4, 8):
            raise InputError(f"--quantization-bit-width must be 4 or 8, got {quantization_bit_width}")
        started = time.perf_counter()
        with progress_bar(f"writing TP={target_tp}") as progress:
            conversions.convert_tp(
                input_folder, output_folder, target_tp, quantization_bit_width, _config(config), progress
            )
        _report(output_folder, started)


class Target(str, Enum):
    native = "native"
    sat = "sat"


def convert(
    input_folder: Annotated[Path, typer.Option("--input", help="Checkpoint to read (SAT at any TP, or native).")],
    output_folder: Annotated[Path, typer.Option("--output", help="New folder to write.")],
    to: Annotated[Target, typer.Option(help="Format to write.")] = Target.native,
    tp: Annotated[int, typer.Option(help="TP degree of the SAT shards (with --to sat).")] = 1,
    shard_size_gb: Annotated[float, typer.Option(help="Largest safetensors file (with --to native), in GiB.")] = 4.0,
    config: Annotated[str | None, typer.Option(help="Preset name or config.json, if the folder has none.")] = None,
) -> None:
    """Convert between the reference's SAT format and glm-engine's native sharded safetensors."""
    with user_errors():
        limit = _shard_bytes(shard_size_gb)
        started = time.perf_counter()
        with progress_bar(f"writing {to.value}") as progress:
            if to is Target.native:
                conversions.convert_to_native(input_folder, output_folder, _config(config), limit, progress)
            else:
                conversions.convert_tp(input_folder, output_folder, tp, None, _config(config), progress)
        _report(output_folder, started)


def _shard_bytes(shard_size_gb: float) -> int:
    """``--shard-size-gb`` in bytes; nan and inf are refused with the rest (``nan <= 0`` is False, and ``int()`` of
    either raised a traceback)."""
    if not math.isfinite(shard_size_gb) or shard_size_gb <= 0:
        raise InputError(f"--shard-size-gb must be positive and finite, got {shard_size_gb}")
    return int(shard_size_gb * GIB)


def _config(config: str | None) -> GLMConfig | None:
    return resolve_config(config) if config else None


def _report(output_folder: Path, started: float) -> None:
    written = open_checkpoint(output_folder)  # re-validates what was written
    size = sum(f.stat().st_size for f in written.files)
    print(
        f"wrote {written.describe()}: {len(written.files)} files, {size / GIB:.2f} GiB in "
        f"{time.perf_counter() - started:.1f} s"
    )


def quantize(
    checkpoint: Annotated[
        Path, typer.Option(help="Checkpoint to quantize (SAT at any TP, or native; FP16/BF16/FP32).")
    ],
    output: Annotated[Path, typer.Option(help="New folder for the quantized native checkpoint.")],
    bits: Annotated[int, typer.Option(help="4 or 8.")] = 8,
    scheme: Annotated[str, typer.Option(help="rowwise (the reference's) or groupwise.")] = "rowwise",
    group_size: Annotated[int | None, typer.Option(help="Input columns per scale for groupwise: 32, 64, 128.")] = None,
    shard_size_gb: Annotated[float, typer.Option(help="Largest safetensors file, in GiB.")] = 4.0,
    config: Annotated[str | None, typer.Option(help="Preset name or config.json, if the folder has none.")] = None,
) -> None:
    """Quantize the four linears per layer offline into a native checkpoint that loads quantized."""
    with user_errors():
        if bits not in (4, 8):  # QuantSpec.parse's "choose int8 or int4" names no flag of this command
            raise InputError(f"--bits must be 4 or 8, got {bits}")
        spec = QuantSpec.parse(bits, scheme, group_size)
        limit = _shard_bytes(shard_size_gb)
        source = open_checkpoint(checkpoint, _config(config))
        check_quant_fits(weight_layout(source.config), 1, spec)
        started = time.perf_counter()
        with progress_bar(f"quantizing to {spec.describe()}") as progress:
            conversions.convert_to_native(checkpoint, output, _config(config), limit, progress, quant=spec)
        _report(output, started)
