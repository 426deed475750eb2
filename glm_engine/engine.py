"""The Python API: ``load()`` a model on a backend, then ``generate()`` text or ``forward()`` logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from glm_engine.backends.base import Backend, GraphLevelBackend, ModelRunner, dtype_name, parse_dtype
from glm_engine.backends.registry import REGISTRY, op_table_for
from glm_engine.checkpoint import Checkpoint, open_checkpoint
from glm_engine.config import PRESETS, GLMConfig, preset
from glm_engine.errors import BackendError, ConfigError, InputError, ParallelError
from glm_engine.exported import refuse_exported_folder  # load() refuses exported folders; chatglm_engine imports it
from glm_engine.generation.blank_filling import Completion, fill_blanks
from glm_engine.generation.decode import TokenCallback
from glm_engine.generation.options import GenerationOptions
from glm_engine.model.glm import GLMModel
from glm_engine.model.weights import (
    EMBEDDING_KEY,
    GLMWeights,
    is_quantized_key,
    parameter_shapes,
    quantize_linears,
    random_state_dict,
)
from glm_engine.ops.interface import Op
from glm_engine.parallel.communicator import Communicator, init_from_environment
from glm_engine.parallel.degree import check_tp_degree
from glm_engine.parallel.loading import rank_state_dict
from glm_engine.quant.spec import QuantSpec
from glm_engine.tokenizer import GLMTokenizer, builtin_tokenizer, load_tokenizer

# What ``load()`` and ``glm-engine run`` use without a checkpoint: the small trained bilingual demo model shipped
# with the package (tools/train_demo_model.py made it).
DEFAULT_MODEL = str(Path(__file__).resolve().parent / "assets" / "demo_model")
RANDOM_WEIGHTS_SEED = 1234
# Random weights are for test-sized presets; anything larger needs a checkpoint.
MAX_RANDOM_PARAMETERS = 2_000_000_000


@dataclass
class Engine:
    """A model loaded on one backend, with its tokenizer."""

    runner: ModelRunner
    tokenizer: GLMTokenizer
    backend: Backend
    source: str
    notes: list[str] = field(default_factory=list)
    banned_tokens: tuple[slice, ...] = ()  # id ranges never generated

    @property
    def config(self) -> GLMConfig:
        return self.runner.config

    @property
    def dtype(self) -> torch.dtype:
        return self.runner.dtype

    def generate(
        self,
        prompts: str | Sequence[str],
        on_token: TokenCallback | None = None,
        generator: torch.Generator | None = None,
        **options: object,
    ) -> list[Completion]:
        """Fill the blanks of each prompt (``[MASK]``, ``[sMASK]``, or continue with ``[gMASK]``).

        ``options`` are :class:`GenerationOptions` fields (``sampling_strategy``, ``out_seq_length``, ``top_k``,
        ``top_p``, ``temperature``, ``num_beams``, ``seed`` ...). ``on_token(step, tokens, parents)`` streams each
        step. Pass one ``generator`` to several calls to continue a single random stream (``seed`` is then unused).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise InputError("no prompts given")
        return fill_blanks(
            self.runner,
            self.tokenizer,
            list(prompts),
            GenerationOptions.from_kwargs(**options),
            on_token,
            self.banned_tokens,
            generator,
        )

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[b, s, vocab]`` as the reference computes them: ids and positions ``[b, s]``, a bool mask
        ``[b or 1, 1, s, s]`` with True = blocked."""
        if input_ids.dim() != 2 or position_ids.shape != input_ids.shape:
            raise InputError(
                f"input_ids and position_ids must both be [batch, seq]; got {tuple(input_ids.shape)} "
                f"and {tuple(position_ids.shape)}"
            )
        b, s = input_ids.shape
        if (
            attention_mask.dtype != torch.bool
            or attention_mask.dim() != 4
            or attention_mask.shape[1:] != (1, s, s)
            or attention_mask.shape[0] not in (1, b)
        ):
            raise InputError(
                f"attention_mask must be bool [{b} or 1, 1, {s}, {s}] with True = blocked; got "
                f"{attention_mask.dtype} {tuple(attention_mask.shape)}"
            )
        return forward_checked(self.runner, input_ids, position_ids, attention_mask)


def forward_checked(
    runner: ModelRunner, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``runner.forward`` under inference mode, after checking ids and positions against its config."""
    config = runner.config
    if int(position_ids.max()) >= config.max_sequence_length or int(position_ids.min()) < 0:
        raise InputError(f"position ids must lie in [0, {config.max_sequence_length})")
    if int(input_ids.max()) >= config.vocab_size or int(input_ids.min()) < 0:
        raise InputError(f"token ids must lie in [0, {config.vocab_size})")
    device = runner.device
    with torch.inference_mode():
        return runner.forward(input_ids.to(device), position_ids.to(device), attention_mask.to(device))


def resolve_dtype(dtype: str | torch.dtype | None, backend: Backend) -> torch.dtype:
    """A dtype name (fp32, bf16, fp16) or torch dtype; None is the backend's first choice."""
    if dtype is None:
        return backend.default_dtype()
    if isinstance(dtype, torch.dtype):
        return dtype
    return parse_dtype(dtype)


def resolve_config(config: str | Path | GLMConfig | None) -> GLMConfig | None:
    """A preset name or config.json path as a GLMConfig (None stays None: use the checkpoint's own)."""
    if config is None or isinstance(config, GLMConfig):
        return config
    if str(config) in PRESETS:
        return preset(str(config))
    if Path(config).is_file():
        return GLMConfig.from_json_file(config)
    raise ConfigError(f"--config {config!r} is neither a preset ({', '.join(PRESETS)}) nor a config.json file")


def _is_preset(path_or_preset: str | Path) -> bool:
    return isinstance(path_or_preset, str) and path_or_preset in PRESETS and not Path(path_or_preset).exists()


def describe_source(path_or_preset: str | Path) -> str:
    """How messages name a model before it is opened: the built-in demo model, a preset or a checkpoint folder."""
    if _is_preset(path_or_preset):
        return f"preset {path_or_preset}"
    return "the built-in demo model" if str(path_or_preset) == DEFAULT_MODEL else f"checkpoint {path_or_preset}"


def peek_config(path_or_preset: str | Path, config: str | Path | GLMConfig | None = None) -> GLMConfig:
    """The model config from ``config``, a preset or the checkpoint's metadata (no weights are read), so a launcher
    can check the TP degree before starting any rank."""
    resolved = resolve_config(config)
    if _is_preset(path_or_preset):
        return resolved or preset(str(path_or_preset))
    return open_checkpoint(path_or_preset, resolved).config


def _communicator(tp: int, given: Communicator | None, backend: Backend) -> Communicator:
    """The communicator of ``tp`` ranks: the caller's, one joined from torchrun's environment, or a single process."""
    if given is None:
        given = Communicator() if tp == 1 else init_from_environment(backend)
    if given.world_size != tp:
        raise ParallelError(
            f"tp={tp} needs {tp} ranks, but the process group has {given.world_size}; start as many ranks as --tp"
        )
    return given


def _quantization(
    requested: QuantSpec | None,
    checkpoint: Checkpoint | None,
    backend: Backend,
    dtype: torch.dtype,
    tp: int,
    notes: list[str],
) -> tuple[QuantSpec | None, bool]:
    """The quantization the model runs with, and whether a quantized checkpoint stays quantized. A stored checkpoint
    is checked in every format its linears take at ``tp`` (re-sharding can make row-parallel ones groupwise)."""
    stored = checkpoint.quant_spec if checkpoint is not None else None
    if requested is not None and stored is not None:
        raise InputError(
            f"{checkpoint.describe()} is already quantized ({stored.describe()}); drop --quant to run it as it is, "
            "or quantize its FP16 original"
        )
    spec = requested or stored
    if spec is None:
        return None, True
    specs = [requested] if requested is not None else checkpoint.runtime_quant_specs(tp)
    for each in specs:
        verdict = backend.supports(Op.LINEAR, dtype, each.format)
        if not verdict:
            if requested is not None:
                raise BackendError(f"--quant {spec.describe()}: {verdict.reason}")
            notes.append(f"{stored.describe()} weights dequantized while loading ({each.describe()}): {verdict.reason}")
            return None, False
        notes.append(f"linears in {each.describe()}" + (f" ({verdict.reason})" if verdict.reason else ""))
    if len(specs) > 1:
        notes.append(f"row-parallel linears re-sharded from TP={checkpoint.source_tp} keep one scale per source slice")
    return spec, True


def check_quant_fits(config: GLMConfig, tp: int, spec: QuantSpec, output: bool = False) -> None:
    """An InputError unless the group size divides every quantized linear's input width on one rank (and the
    hidden width, when the output projection is quantized too)."""
    if spec.group_size is None:
        return
    for key, shape in parameter_shapes(config, tp).items():
        quantized = is_quantized_key(key) or (output and key == EMBEDDING_KEY)
        if quantized and shape[1] % spec.group_size:
            raise InputError(
                f"group size {spec.group_size} does not divide the {shape[1]} inputs of {key.split('.', 3)[-1]} "
                f"at TP={tp}; choose a group size from 32, 64, 128 that does, or rowwise"
            )


def load(
    path_or_preset: str | Path = DEFAULT_MODEL,
    backend: str = "auto",
    dtype: str | torch.dtype | None = None,
    tokenizer: str | Path | None = None,
    config: str | Path | GLMConfig | None = None,
    device_index: int = 0,
    progress: Callable[[int, int], None] | None = None,
    tp: int = 1,
    communicator: Communicator | None = None,
    quant: str | QuantSpec | None = None,
    quant_scheme: str = "rowwise",
    quant_group_size: int | None = None,
    quant_output: bool = False,
    cuda_graphs: bool | None = None,
    backend_options: dict[str, object] | None = None,
    random_dtype: torch.dtype = torch.float32,
    max_random_parameters: int = MAX_RANDOM_PARAMETERS,
) -> Engine:
    """Load a checkpoint folder (default: the built-in demo model), or a preset name (seeded random weights).

    ``backend`` is a registered name or ``"auto"``; ``dtype`` ``"fp32" | "bf16" | "fp16"`` (default: the backend's
    first choice); ``tokenizer`` the ``ice_text.model`` file or its folder (default: the checkpoint's own, else
    icetk's cache; the packaged test tokenizer for presets); ``config`` a preset name or config.json overriding the
    checkpoint's; ``progress(done, total)`` follows the weights as they are converted and placed on the device.

    ``tp > 1`` loads this process's rank of a tensor-parallel model: every rank calls ``load`` with the same
    arguments, under torchrun (the process group is joined from its environment) or with a ``communicator`` of
    ``tp`` ranks; the device is the rank's LOCAL_RANK. Every rank's ``generate``/``forward`` returns the full result.

    ``quant="int8"|"int4"`` quantizes the four linears per layer while loading (``quant_scheme`` ``"rowwise"``, the
    reference's, or ``"groupwise"`` with ``quant_group_size`` 32/64/128). A quantized checkpoint runs quantized
    without it (dequantized, with a note, where the backend has no kernels for its format). ``quant_output=True``
    also runs the logits through a quantized copy of the (tied) embedding in the same format: at batch-1 decode the
    output projection is a large share of the bytes streamed per token, and chatglm.cpp quantizes it too; the
    embedding lookup keeps the floating-point table, so memory grows by the quantized copy.

    ``backend_options`` are keyword options of a graph-level backend's ``load_runner`` (onnxruntime: ``provider``,
    ``threads``; tensorrt: ``device_index``).

    ``cuda_graphs=False`` runs cached decode steps eagerly on cuda (default: replayed CUDA graphs unless
    ``GLM_ENGINE_CUDA_GRAPHS=0``; see :mod:`glm_engine.generation.cuda_graph`).

    A preset's random weights are drawn in ``random_dtype`` (fp16 halves the host memory of large shapes, and is
    what real checkpoints store) up to ``max_random_parameters`` (``glm-engine bench`` raises it for its
    ``random:`` models).
    """
    chosen, why = REGISTRY.resolve(backend)
    run_dtype = resolve_dtype(dtype, chosen)
    notes = [why]
    if isinstance(chosen, GraphLevelBackend):  # runs an exported graph: no weights of ours to load
        if tp != 1:
            raise ParallelError(f"{chosen.name} runs an exported graph, which has no tensor-parallel form; use tp=1")
        if quant is not None or quant_output:
            raise InputError(f"{chosen.name} runs an exported graph; quantize before exporting instead of --quant")
        # An exported graph has its own dtype: pass one only when asked. ``backend_options`` (e.g. onnxruntime's
        # ``provider``) go to the backend's ``load_runner``.
        runner = chosen.load_runner(str(path_or_preset), run_dtype if dtype else None, **(backend_options or {}))
        if not isinstance(runner.config, GLMConfig):
            raise InputError(
                f"{path_or_preset} is a ChatGLM-6B export: chat with it through `glm-engine chat --backend "
                f"{chosen.name} --checkpoint {path_or_preset}` or glm_engine.load_chatglm()"
            )
        tok = load_tokenizer(tokenizer, runner.config.vocab_layout, path_or_preset)
        return Engine(runner, tok, chosen, f"exported model {path_or_preset}", notes)
    refuse_exported_folder(path_or_preset)
    banned: tuple[slice, ...] = ()
    checkpoint = None
    if _is_preset(path_or_preset):
        model_config = resolve_config(config) or preset(path_or_preset)
        if model_config.num_parameters() > max_random_parameters:
            raise InputError(
                f"preset {path_or_preset} has {model_config.num_parameters() / 1e9:.1f}B parameters; "
                "random weights are only for small presets: pass a checkpoint"
            )
        state_dict = random_state_dict(model_config, RANDOM_WEIGHTS_SEED, random_dtype)
        source = f"preset {path_or_preset} with random weights (seed {RANDOM_WEIGHTS_SEED})"
        notes.append(f"{source}: its output is noise, not language")
        tok = (
            load_tokenizer(tokenizer, model_config.vocab_layout)
            if tokenizer
            else builtin_tokenizer(model_config.vocab_layout)
        )
        text = tok.text_id_range
        banned = (slice(0, text.start), slice(text.stop, model_config.vocab_size))  # keep noise readable
    else:
        checkpoint = open_checkpoint(path_or_preset, resolve_config(config))  # validated before anything heavy
        model_config = checkpoint.config
        source = "the built-in demo model" if str(path_or_preset) == DEFAULT_MODEL else checkpoint.describe()
        tok = load_tokenizer(tokenizer, model_config.vocab_layout, path_or_preset)
    check_tp_degree(model_config, tp, source)
    comm = _communicator(tp, communicator, chosen)
    if comm.world_size > 1:
        device_index = comm.local_rank
    device = chosen.device(device_index)
    ops = op_table_for(chosen, run_dtype, device_index)  # refuses unsupported dtypes before loading weights
    requested = quant if isinstance(quant, QuantSpec) else QuantSpec.requested(quant, quant_scheme, quant_group_size)
    spec, keep_quantized = _quantization(requested, checkpoint, chosen, run_dtype, tp, notes)
    if quant_output and spec is None:
        raise InputError(
            "--quant-output quantizes the output projection like the linears: add --quant int8|int4 "
            "(or load a quantized checkpoint on a backend with kernels for it)"
        )
    if spec is not None:
        check_quant_fits(model_config, tp, spec, quant_output)
    if checkpoint is None:
        state_dict = rank_state_dict(state_dict, model_config, comm.rank, tp, source)
        if spec is not None:
            state_dict = quantize_linears(state_dict, spec.bits, spec.group_size)
    else:
        state_dict = checkpoint.rank_state_dict(
            comm.rank, tp, run_dtype, device, progress, quant=requested, keep_quantized=keep_quantized
        )
        progress = None  # the weights are already converted and placed
    output_quant = (spec.bits, spec.group_size) if quant_output and spec is not None else None
    weights = GLMWeights.from_state_dict(
        state_dict, model_config, run_dtype, device, source, progress, tp, ops.prepare_quantized, output_quant
    )
    if output_quant is not None:
        notes.append(f"output projection in {spec.describe()} (a quantized copy of the embedding)")
    if checkpoint is not None:
        weights.unused_keys = checkpoint.unused_keys
    runner = GLMModel(model_config, weights, ops, comm)
    runner.cuda_graphs = cuda_graphs
    notes.append(
        f"{chosen.name} backend, {dtype_name(run_dtype)}" + (f", tensor parallel over {tp} ranks" if tp > 1 else "")
    )
    notes.extend(
        f"{op.value} in {dtype_name(run_dtype)}: {v.reason}"
        for op in Op
        if (v := chosen.supports(op, run_dtype)).reason
    )
    if weights.unused_keys:
        notes.append(
            f"{len(weights.unused_keys)} keys of the checkpoint are not used: {', '.join(weights.unused_keys[:5])}"
        )
    return Engine(runner, tok, chosen, source, notes, banned)
