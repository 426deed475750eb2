"""The Python API for ChatGLM-6B: ``load_chatglm()`` a Hugging Face folder on a backend, then ``chat()``.

ChatGLM's generation differs from GLM-130B's blank filling (2-D positions, a chat prompt, ``<eop>`` as the only end
token), so it has its own engine; ``glm_engine.load`` recognises a ChatGLM folder and points here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from glm_engine.backends.base import Backend, GraphLevelBackend, ModelRunner, dtype_name
from glm_engine.backends.registry import REGISTRY, op_table_for
from glm_engine.checkpoint.hf import open_chatglm_checkpoint
from glm_engine.engine import (
    MAX_RANDOM_PARAMETERS,
    RANDOM_WEIGHTS_SEED,
    forward_checked,
    refuse_exported_folder,
    resolve_dtype,
)
from glm_engine.errors import BackendError, InputError, TokenizerError
from glm_engine.generation.chat import ChatOptions, History, chat, generate_ids
from glm_engine.model.chatglm import ChatGLMModel
from glm_engine.model.chatglm_config import CHATGLM_PRESETS, ChatGLMConfig, chatglm_preset
from glm_engine.model.chatglm_weights import ChatGLMWeights, TensorInfo, plan_load, random_state_dict
from glm_engine.ops.interface import Op, OpTable, PackedLinear
from glm_engine.quant.spec import QuantSpec
from glm_engine.quant.weight import QuantizedWeight
from glm_engine.tokenizer.chatglm import ChatGLMTokenizer
from glm_engine.tokenizer.ice import BUILTIN_TOKENIZER_PATH, MODEL_FILENAME

Progress = Callable[[int, int], None]


@dataclass
class ChatGLMEngine:
    """A ChatGLM model loaded on one backend, with its tokenizer."""

    runner: ChatGLMModel | ModelRunner  # glm-engine's graph, or an exported one (onnxruntime, tensorrt)
    tokenizer: ChatGLMTokenizer
    backend: Backend
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def config(self) -> ChatGLMConfig:
        return self.runner.config

    def chat(
        self,
        query: str,
        history: Sequence[tuple[str, str]] = (),
        generator: torch.Generator | None = None,
        on_text: Callable[[str], None] | None = None,
        **options: object,
    ) -> tuple[str, History]:
        """One chat round, as the reference's ``model.chat(tokenizer, query, history)``: ``(response, history)``.

        ``options`` are :class:`~glm_engine.generation.chat.ChatOptions` fields (``max_length``, ``max_new_tokens``,
        ``do_sample``,
        ``top_p``, ``temperature``, ``top_k``, ``seed``); ``on_text(reply_so_far)`` streams as ``stream_chat``.
        """
        return chat(self.runner, self.tokenizer, query, history, _options(options), generator, on_text)

    def generate(self, prompt: str, generator: torch.Generator | None = None, **options: object) -> str:
        """The text the model continues ``prompt`` with (``model.generate`` on ``tokenizer(prompt)``, decoded)."""
        opts = _options(options)
        ids = self.tokenizer.build_inputs(prompt)
        strategy = opts.build_strategy(self.config, generator)
        out = generate_ids(self.runner, self.config, [ids], opts.length_limit(len(ids)), strategy)
        return self.tokenizer.decode(t for t in out[0] if t not in self.config.end_token_ids)

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[b, s, vocab]``: ids ``[b, s]``, positions ``[b, 2, s]`` (position ids, block position ids),
        bool mask ``[b or 1, 1, s, s]`` with True = blocked, the reference's layouts."""
        b, s = input_ids.shape
        if position_ids.shape != (b, 2, s) or attention_mask.dtype != torch.bool or attention_mask.dim() != 4:
            raise InputError(
                f"need input_ids [b, s], position_ids [b, 2, s] and a bool mask [b, 1, s, s]; got "
                f"{tuple(input_ids.shape)}, {tuple(position_ids.shape)}, {attention_mask.dtype} "
                f"{tuple(attention_mask.shape)}"
            )
        return forward_checked(self.runner, input_ids, position_ids, attention_mask)


def _options(options: dict[str, object]) -> ChatOptions:
    known = set(ChatOptions.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"unknown chat options {unknown}; known: {sorted(known)}")
    return ChatOptions(**options)  # type: ignore[arg-type]


def find_chatglm_tokenizer(path: str | Path | None, checkpoint: Path | None) -> Path:
    """``path`` (the file or its folder), else ``ice_text.model`` in the checkpoint folder. icetk's cache is not
    searched: GLM-130B's ``ice_text.model`` there has another id layout."""
    candidates = []
    if path is not None:
        given = Path(path).expanduser()
        candidates.append(given / MODEL_FILENAME if given.is_dir() else given)
    elif checkpoint is not None:
        candidates.append(checkpoint / MODEL_FILENAME)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(map(str, candidates)) or "nowhere (no checkpoint folder)"
    raise TokenizerError(
        f"ChatGLM's {MODEL_FILENAME} not found; looked in: {looked}. It ships in the THUDM/chatglm-6b folder; pass "
        "--tokenizer PATH. glm-engine never downloads it."
    )


def _quant_plan(
    backend: Backend,
    dtype: torch.dtype,
    ops: OpTable,
    quant: str | None,
    scheme: str,
    group_size: int | None,
    stored_bits: int,
    notes: list[str],
) -> tuple[Callable[[QuantizedWeight], PackedLinear] | None, tuple[int, int | None] | None]:
    """How the linears are loaded: ``(prepare, (bits, group))`` for quantizing while loading, ``(prepare, None)``
    to keep a quantized release quantized, ``(None, None)`` for floating point (or to dequantize a release)."""
    QuantSpec.requested(quant, scheme, group_size)  # a scheme without --quant is refused, not ignored
    if quant is not None and stored_bits:
        raise InputError(f"the checkpoint is already INT{stored_bits}; drop --quant to run it as it is")
    if quant is not None:
        spec = QuantSpec.parse(quant, scheme, group_size)
        verdict = backend.supports(Op.LINEAR, dtype, spec.format)
        if not verdict:
            raise BackendError(f"--quant {spec.describe()}: {verdict.reason}")
        notes.append(f"linears in {spec.describe()}" + (f" ({verdict.reason})" if verdict.reason else ""))
        return ops.prepare_quantized, (spec.bits, spec.group_size)
    if stored_bits:
        verdict = backend.supports(Op.LINEAR, dtype, QuantSpec(stored_bits).format)
        if not verdict:
            notes.append(f"INT{stored_bits} weights dequantized to {dtype_name(dtype)} on load: {verdict.reason}")
            return None, None
        notes.append(
            f"linears in INT{stored_bits} rowwise, as stored" + (f" ({verdict.reason})" if verdict.reason else "")
        )
        return ops.prepare_quantized, None
    return None, None


def _output_quant(
    wanted: bool,
    prepare: Callable[[QuantizedWeight], PackedLinear] | None,
    spec: tuple[int, int | None] | None,
    stored_bits: int,
    notes: list[str],
) -> tuple[int, int | None] | None:
    """The format ``lm_head`` is quantized to with ``quant_output``: the linears' (requested, or a release's)."""
    if not wanted:
        return None
    if prepare is None:
        raise InputError(
            "--quant-output quantizes lm_head like the linears: add --quant int8|int4 (or load an INT4/INT8 release "
            "on a backend with kernels for it)"
        )
    output = spec or (stored_bits, None)
    notes.append(f"lm_head in {QuantSpec(*output).describe()}")
    return output


def load_chatglm(
    path_or_preset: str | Path,
    backend: str = "auto",
    dtype: str | torch.dtype | None = None,
    tokenizer: str | Path | None = None,
    device_index: int = 0,
    progress: Progress | None = None,
    quant: str | None = None,
    quant_scheme: str = "rowwise",
    quant_group_size: int | None = None,
    quant_output: bool = False,
    cuda_graphs: bool | None = None,
    backend_options: dict[str, object] | None = None,
    config: ChatGLMConfig | None = None,
    random_dtype: torch.dtype = torch.float32,
    max_random_parameters: int = MAX_RANDOM_PARAMETERS,
) -> ChatGLMEngine:
    """Load a ChatGLM-6B Hugging Face folder (fp16, or the INT4/INT8 releases), or ``chatglm-tiny`` (random weights
    with the packaged test tokenizer, for trying things out).

    ``backend`` is a registered name or ``"auto"``; ``dtype`` ``"fp32" | "bf16" | "fp16"`` (default: the backend's
    first choice); ``tokenizer`` ``ice_text.model`` or its folder (default: the checkpoint's own);
    ``progress(done, total)`` follows the weights as they are converted; ``quant`` (``"int8"``/``"int4"``, with
    ``quant_scheme``/``quant_group_size``) quantizes the linears while loading, as ``glm_engine.load`` does. The
    INT4/INT8 releases run quantized where the backend has kernels for them, dequantized otherwise.
    ``quant_output=True`` quantizes ``lm_head`` in the same format (as chatglm.cpp does; see ``glm_engine.load``);
    ``cuda_graphs`` as in ``glm_engine.load``. ``config`` replaces a preset's shapes (random weights only);
    ``random_dtype`` and ``max_random_parameters`` as in ``glm_engine.load``.

    A graph-level ``backend`` (``onnxruntime``, ``tensorrt``) runs a folder made by ``glm-engine export onnx`` from a
    ChatGLM checkpoint (or the engine built from it); ``backend_options`` go to its ``load_runner`` (onnxruntime:
    ``provider``, ``threads``).
    """
    chosen, why = REGISTRY.resolve(backend)
    if isinstance(chosen, GraphLevelBackend):
        return _load_exported(chosen, why, path_or_preset, dtype, tokenizer, quant, quant_output, backend_options)
    refuse_exported_folder(path_or_preset)
    run_dtype = resolve_dtype(dtype, chosen)
    ops = op_table_for(chosen, run_dtype, device_index)  # refuses graph-level backends and unsupported ops/dtypes
    device = chosen.device(device_index)
    notes = [why]
    name = str(path_or_preset)
    if name in CHATGLM_PRESETS and not Path(name).exists():
        config = config or chatglm_preset(name)
        if config.num_parameters() > max_random_parameters:
            raise InputError(f"preset {name} has {config.num_parameters() / 1e9:.1f}B parameters: pass a checkpoint")
        state_dict = random_state_dict(config, RANDOM_WEIGHTS_SEED, random_dtype)
        prepare, spec = _quant_plan(chosen, run_dtype, ops, quant, quant_scheme, quant_group_size, 0, notes)
        output = _output_quant(quant_output, prepare, spec, 0, notes)
        entries = {k: TensorInfo(tuple(v.shape), v.dtype, name) for k, v in state_dict.items()}
        weights = ChatGLMWeights.from_shards(
            [(name, state_dict)],
            plan_load(entries, config, name),
            config,
            run_dtype,
            device,
            None,
            prepare,
            spec,
            output,
        )
        source = f"preset {name} with random weights (seed {RANDOM_WEIGHTS_SEED})"
        notes.append(f"{source}: its output is noise, not language")
        tok = ChatGLMTokenizer(find_chatglm_tokenizer(tokenizer or BUILTIN_TOKENIZER_PATH, None), config)
    else:
        if config is not None:
            raise InputError("a config override goes with a ChatGLM preset (random weights), not a checkpoint folder")
        checkpoint = open_chatglm_checkpoint(path_or_preset)
        config = checkpoint.config
        tok = ChatGLMTokenizer(find_chatglm_tokenizer(tokenizer, checkpoint.path), config)  # fail before loading
        plan = plan_load(checkpoint.entries, config, str(checkpoint.path))  # validated before anything heavy
        prepare, spec = _quant_plan(chosen, run_dtype, ops, quant, quant_scheme, quant_group_size, plan.bits, notes)
        output = _output_quant(quant_output, prepare, spec, plan.bits, notes)
        weights = ChatGLMWeights.from_shards(
            checkpoint.shards(), plan, config, run_dtype, device, progress, prepare, spec, output
        )
        source = checkpoint.describe()
        if weights.unused_keys:
            notes.append(f"{len(weights.unused_keys)} keys not used: {', '.join(weights.unused_keys[:5])}")
    notes.append(f"{chosen.name} backend, {dtype_name(run_dtype)}")
    model = ChatGLMModel(config, weights, ops)
    model.cuda_graphs = cuda_graphs
    return ChatGLMEngine(model, tok, chosen, source, notes)


def _load_exported(
    chosen: GraphLevelBackend,
    why: str,
    folder: str | Path,
    dtype: str | torch.dtype | None,
    tokenizer: str | Path | None,
    quant: str | None,
    quant_output: bool,
    backend_options: dict[str, object] | None,
) -> ChatGLMEngine:
    """A ChatGLM export on a graph-level backend: the graph carries its own dtype and quantization."""
    if quant is not None or quant_output:
        raise InputError(f"{chosen.name} runs an exported graph; quantize when exporting instead of --quant")
    wanted = resolve_dtype(dtype, chosen) if dtype is not None else None
    runner = chosen.load_runner(str(folder), wanted, **(backend_options or {}))
    if not isinstance(runner.config, ChatGLMConfig):
        raise InputError(
            f"{folder} is a GLM-130B export: run it with `glm-engine run --backend {chosen.name} --checkpoint "
            f"{folder}` or glm_engine.load()"
        )
    tok = ChatGLMTokenizer(find_chatglm_tokenizer(tokenizer, Path(folder)), runner.config)
    notes = [why, f"{chosen.name} backend, {dtype_name(runner.dtype)} (the export's)"]
    return ChatGLMEngine(runner, tok, chosen, f"exported ChatGLM model {folder}", notes)
