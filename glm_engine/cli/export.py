"""``glm-engine export onnx`` (a checkpoint to an ONNX folder with a KV cache) and ``glm-engine export tensorrt``
(that folder to a TensorRT engine)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from glm_engine.backends.base import parse_dtype
from glm_engine.cli.errors import USER_ERROR_EXIT_CODE, user_errors
from glm_engine.cli.progress import progress_bar
from glm_engine.engine import DEFAULT_MODEL
from glm_engine.errors import InputError

export_app = typer.Typer(
    help="Export a model for graph-level runtimes (ONNX Runtime, TensorRT).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
MIB = 2**20


@export_app.command("onnx")
def export_onnx_command(
    output: Annotated[Path, typer.Option(help="New folder for model.onnx, its weights and genai_config.json.")],
    checkpoint: Annotated[
        str,
        typer.Option(
            help="Checkpoint folder (GLM-130B native or SAT; a Hugging Face folder of ChatGLM-6B, ChatGLM2/3, GLM-4 or "
            "GLM-4-0414), or preset name; default: the built-in demo model"
        ),
    ] = DEFAULT_MODEL,
    config: Annotated[str | None, typer.Option(help="Preset name or config.json, if the folder has none.")] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help="Tokenizer file or its folder (ice_text.model, tokenizer.model, tokenizer.json ...), copied into the "
            "export; default: the checkpoint's own"
        ),
    ] = None,
    dtype: Annotated[str, typer.Option(help="Graph dtype: fp32, fp16 or bf16.")] = "fp32",
    max_seq: Annotated[
        int | None, typer.Option(help="Longest sequence (prompt + generated) the graph serves; default: the model's")
    ] = None,
    quant: Annotated[str | None, typer.Option(help="Quantize the linears: int8 or int4 (weight-only).")] = None,
    scheme: Annotated[str, typer.Option(help="rowwise (a scale per row) or groupwise.")] = "rowwise",
    group_size: Annotated[int | None, typer.Option(help="Input columns per scale with groupwise: 32, 64, 128.")] = None,
    target: Annotated[
        str,
        typer.Option(help="Quantized op: ort (MatMulNBits) or tensorrt (opset-21 DequantizeLinear)."),
    ] = "ort",
    accuracy_level: Annotated[
        int,
        typer.Option(help="MatMulNBits accuracy_level: 0 exact (default), 4 int8 activations (faster on CPU, ~5e-3)."),
    ] = 0,
    quant_output: Annotated[
        bool,
        typer.Option(help="Quantize the logits' weight too (GLM: a copy of the tied embedding; ChatGLM: lm_head)."),
    ] = False,
    verify: Annotated[
        bool, typer.Option(help="Compare ONNX Runtime (CPU) with glm-engine: prefill and 7 greedy cached steps.")
    ] = False,
) -> None:
    """Export the decoder of any family (GLM-130B, ChatGLM-6B, ChatGLM2/3, GLM-4, GLM-4-0414) as one ONNX graph with
    past/present KV-cache inputs and outputs (grouped key/value heads where the model has them)."""
    from glm_engine.export.onnx_export import export_onnx
    from glm_engine.exported import QuantTarget
    from glm_engine.quant.spec import QuantSpec

    with user_errors():
        spec = QuantSpec.requested(quant, scheme, group_size)
        if target not in {t.value for t in QuantTarget}:
            raise InputError(f"--target must be ort or tensorrt, got {target!r}")
        if accuracy_level not in (0, 1, 2, 3, 4):
            raise InputError(f"--accuracy-level must be 0-4, got {accuracy_level}")
        graph_dtype = parse_dtype(dtype)
        if verify:
            from glm_engine.export.verify import MIN_STEPS, VERIFY_PROMPT_TOKENS, check_verifiable

            # before writing an export that cannot be verified (the length is checked here only when given)
            check_verifiable(VERIFY_PROMPT_TOKENS + MIN_STEPS if max_seq is None else max_seq, graph_dtype)
        started = time.perf_counter()
        with progress_bar("exporting layers") as progress:
            exported = export_onnx(
                checkpoint,
                output,
                graph_dtype,
                max_seq,
                spec,
                QuantTarget(target),
                accuracy_level,
                config,
                progress,
                quant_output,
                tokenizer,
            )
        quantized = f", {exported.quant.describe()} for {target}" if exported.quant is not None else ""
        quantized += " (output projection too)" if exported.quant_output else ""
        print(
            f"wrote {output}: {dtype}{quantized}, {exported.weight_bytes / MIB:.1f} MiB of weights, positions up to "
            f"{exported.max_seq}, in {time.perf_counter() - started:.1f} s"
        )
        if verify:
            from glm_engine.export.verify import verify_export

            report = verify_export(str(output), checkpoint, config)
            print(f"verify (onnxruntime CPU): {report.describe()}")
            if not report.passed:
                raise typer.Exit(USER_ERROR_EXIT_CODE)


@export_app.command("tensorrt")
def export_tensorrt_command(
    onnx: Annotated[Path, typer.Option(help="Folder made by `glm-engine export onnx`.")],
    output: Annotated[Path, typer.Option(help="New folder for the engine, its genai_config.json and tokenizer.")],
    max_batch: Annotated[int, typer.Option(help="Most rows (prompts x beams) per call.")] = 1,
    max_seq: Annotated[int, typer.Option(help="Most tokens per row, prompt and generated together.")] = 2048,
    opt_seq: Annotated[int, typer.Option(help="Prompt length (and cached length) to tune kernels for.")] = 128,
    cache_dir: Annotated[Path | None, typer.Option(help="Engine cache; default ~/.cache/glm-engine/tensorrt")] = None,
    workspace_gib: Annotated[float, typer.Option(help="Builder workspace limit in GiB.")] = 8.0,
) -> None:
    """Build a TensorRT engine (strongly typed, prefill and decode profiles) from an ONNX export, or reuse the cached
    one built for the same weights, graph, TensorRT version, GPU and profiles."""
    from glm_engine.backends.tensorrt.build import DEFAULT_CACHE_DIR, build_engine
    from glm_engine.backends.tensorrt.plan import Limits

    with user_errors():
        limits = Limits(max_batch, max_seq, opt_seq)
        started = time.perf_counter()
        with progress_bar("building TensorRT engine") as bar:
            result = build_engine(
                onnx,
                output,
                limits,
                cache_dir or DEFAULT_CACHE_DIR,
                int(workspace_gib * 2**30),
                lambda phase, step, steps: bar(step, steps),
            )
        how = "taken from the cache" if result.cached else "built"
        print(f"wrote {output}: engine {how} (key {result.key[:16]}) in {time.perf_counter() - started:.1f} s")
