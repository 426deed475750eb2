"""ChatGLM-6B (v1) as a family: its block's parts, weights, rotary tables, prompt layout, tokenizer and chat.

Source: the public reference code of ``THUDM/chatglm-6b`` (Hugging Face), final revision ``8b7d335`` (2023-09-04;
the model code last changed in ``a8ede82``, the tokenizer in ``4d0fc39``); what it computes, key by key, is in
``docs/families.md`` and ``docs/glm-semantics.md``. What differs from GLM-130B: the DeepNorm ``alpha`` is
``sqrt(2 * 28)`` for any depth; 2-D rotary (two halves of each head, rotated by position ids and block position ids,
each with its own fp16-built table); tanh GeLU instead of GeGLU; ``nn.Linear`` biases (fused into the GEMM); a
separate ``lm_head``; and a chat format.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from glm_engine.checkpoint.hf import CONFIG_FILE_NAME, model_type, open_hf_checkpoint
from glm_engine.errors import CheckpointError, ConfigError, InputError, TokenizerError
from glm_engine.generation.blank_filling import Completion
from glm_engine.generation.chat import ChatOptions
from glm_engine.generation.masks import AlignedBatch, generation_blocked
from glm_engine.model.chatglm.chat import (
    block_positions,
    build_chat_prompt,
    chatglm_batch,
    generate_ids,
    process_response,
    reply,
    rounds_of,
)
from glm_engine.model.chatglm.config import CHATGLM_PRESETS, CONFORMANCE_CONFIG, MODEL_TYPE, ChatGLMConfig
from glm_engine.model.chatglm.reader import ChatGLMReader
from glm_engine.model.chatglm.rotary import chatglm_rotary_table
from glm_engine.model.chatglm.weights import random_state_dict, weight_layout
from glm_engine.model.family import (
    BlankTokens,
    CompletionRounds,
    Family,
    ServingPrompt,
    TokenCallback,
    TransformersBaseline,
)
from glm_engine.model.parts import Activation, BlockParts, DenseBias, Rotary
from glm_engine.model.weights import WeightLayout, WeightReader
from glm_engine.tokenizer.chat_tokenizer import ChatReply
from glm_engine.tokenizer.chatglm import ChatGLMTokenizer
from glm_engine.tokenizer.ice import BUILTIN_TOKENIZER_PATH, MODEL_FILENAME

TOKENIZER_CONFIG_FILE_NAME = "tokenizer_config.json"
# config.json keys of ChatGLM2-6B and later, which also say ``model_type: chatglm`` (``model/chatglm2/``).
LATER_RELEASE_KEYS = ("multi_query_group_num", "padded_vocab_size", "ffn_hidden_size")
# The reference's modeling code (THUDM/chatglm-6b) and what its config.json maps, for the transformers baseline.
TRANSFORMERS_BASELINE = TransformersBaseline(
    code_files=("modeling_chatglm.py", "configuration_chatglm.py"),
    auto_map={
        "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    },
    install_hint="pip install 'transformers>=4.27,<4.34' (the versions THUDM/chatglm-6b's modeling code runs on)",
)


class ChatGLMFamily(Family):
    name = MODEL_TYPE  # "chatglm": Hugging Face's model_type, and the type of exported folders
    title = "ChatGLM-6B"
    config_type = ChatGLMConfig
    chat_model = True
    transformers_baseline = TRANSFORMERS_BASELINE

    def parts(self, config: ChatGLMConfig) -> BlockParts:
        return BlockParts(
            activation=Activation.GELU_TANH,
            rotary=Rotary.TWO_HALVES,
            dense_bias=DenseBias.FUSED,
            deepnorm_alpha=config.deepnorm_alpha,
        )

    def weight_layout(self, config: ChatGLMConfig) -> WeightLayout:
        return weight_layout(config)

    def rotary_tables(
        self,
        config: ChatGLMConfig,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        num_positions: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return chatglm_rotary_table(config.rotary_dim, num_positions or config.max_sequence_length, dtype, device)

    def blank_tokens(self, config: ChatGLMConfig) -> BlankTokens:
        text = range(config.num_image_tokens + 20, min(config.mask_token_id, config.vocab_size))  # past the specials
        return BlankTokens(config.mask_token_id, config.gmask_token_id, config.bos_token_id, config.pad_token_id, text)

    def conformance_config(self) -> ChatGLMConfig:
        return CONFORMANCE_CONFIG

    def presets(self) -> Mapping[str, ChatGLMConfig]:
        return CHATGLM_PRESETS

    def config_to_dict(self, config: ChatGLMConfig) -> dict[str, Any]:
        return {**config.to_hf_dict(), "num_image_tokens": config.num_image_tokens}

    def config_from_dict(self, data: dict[str, Any], source: str) -> ChatGLMConfig:
        data = dict(data)
        return ChatGLMConfig.from_hf_dict(data, source, data.pop("num_image_tokens", None))

    def exported_section(self, config: ChatGLMConfig) -> dict[str, Any]:
        return {
            "config": config.to_hf_dict(),
            "num_image_tokens": config.num_image_tokens,  # tokenizer_config.json's: where text piece 0 sits
            "bos_token_id": config.bos_token_id,
            "eos_token_id": list(config.end_token_ids),
            "pad_token_id": config.pad_token_id,
            "special_tokens": {
                "mask": config.mask_token_id,
                "gmask": config.gmask_token_id,
                "sop": config.bos_token_id,
                "eop": config.eos_token_id,
                "pad": config.pad_token_id,
            },
            "position_ids_shape": ["batch_size", 2, "sequence_length"],
        }

    def config_from_exported(self, section: dict[str, Any], source: str) -> ChatGLMConfig:
        return ChatGLMConfig.from_hf_dict(section["config"], source, section.get("num_image_tokens"))

    def recognises(self, folder: Path) -> bool:
        """``model_type: chatglm`` without the keys ChatGLM2 and later added (they share the model type)."""
        if model_type(folder) != MODEL_TYPE:
            return False
        try:
            data = json.loads((folder / CONFIG_FILE_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return not any(key in data for key in LATER_RELEASE_KEYS)

    def open_checkpoint(self, folder: Path, config: ChatGLMConfig | None) -> WeightReader:
        if config is not None:
            raise InputError("a config override goes with a ChatGLM preset (random weights), not a checkpoint folder")
        config = read_chatglm_config(folder)
        checkpoint = open_hf_checkpoint(folder)
        return ChatGLMReader(config, f"ChatGLM {checkpoint.describe()}", checkpoint=checkpoint)

    def state_dict_reader(self, state_dict: Mapping[str, Any], config: ChatGLMConfig, source: str) -> WeightReader:
        return ChatGLMReader(config, source, state_dict=state_dict)

    def random_state_dict(self, config: ChatGLMConfig, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
        return random_state_dict(config, seed, dtype)

    def load_tokenizer(
        self, config: ChatGLMConfig, path: str | Path | None, folder: Path | None, random: bool
    ) -> ChatGLMTokenizer:
        return ChatGLMTokenizer(
            find_chatglm_tokenizer(path or (BUILTIN_TOKENIZER_PATH if random else None), folder), config
        )

    def check_tokenizer(self, config: ChatGLMConfig, tokenizer: ChatGLMTokenizer, random: bool) -> None:
        """The tokenizer's ids (image offset plus pieces) must fit the vocabulary (its special ids are checked
        against the config when it is built)."""
        if tokenizer.vocab_size > config.vocab_size:
            raise TokenizerError(
                f"{tokenizer.model_path} produces {tokenizer.vocab_size} ids but the model has {config.vocab_size} "
                "rows: it belongs to another ChatGLM revision; pass the model's own ice_text.model with --tokenizer"
            )

    def prompt_inputs(self, config: ChatGLMConfig, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``get_position_ids``/``get_masks`` per row: everything before ``<sop>`` attends bidirectionally; from
        ``<sop>`` on, position ids hold the blank's index and block position ids count 1, 2, ... A row without
        ``<sop>`` is all context (positions 0.., block positions 0)."""
        batch, length = input_ids.shape
        positions = torch.zeros(batch, 2, length, dtype=torch.long)
        blocked = torch.empty(batch, 1, length, length, dtype=torch.bool)
        for row, ids in enumerate(input_ids.tolist()):
            positions[row, 0] = torch.arange(length)
            if config.bos_token_id not in ids:
                blocked[row, 0] = generation_blocked(length + 1, length)
                continue
            context = ids.index(config.bos_token_id) + 1
            blank = next((ids.index(m) for m in (config.gmask_token_id, config.mask_token_id) if m in ids), None)
            if blank is None:
                raise InputError("a ChatGLM input with <sop> needs a [gMASK] or [MASK] before it")
            positions[row, 0, context - 1 :] = blank
            positions[row, 1] = block_positions(context, length)
            blocked[row, 0] = generation_blocked(context, length)
        return positions, blocked

    def generation_batch(
        self, config: ChatGLMConfig, prompts: Sequence[Sequence[int]], budgets: Sequence[int]
    ) -> AlignedBatch:
        return chatglm_batch(prompts, config, budgets, config.pad_token_id)

    def continuation_inputs(
        self, config: ChatGLMConfig, batch: int, context: int, total: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt ends at its blank and ``<sop>``: generated tokens keep the blank's position."""
        position = torch.arange(total)
        position[context:] = context - 1
        positions = torch.stack([position, block_positions(context, total)]).expand(batch, 2, total).contiguous()
        return positions, generation_blocked(context, total)[None, None]

    def generate(
        self,
        runner: Any,
        tokenizer: ChatGLMTokenizer,
        prompts: Sequence[str],
        options: dict[str, object],
        on_token: TokenCallback | None,
        generator: torch.Generator | None,
        banned: tuple[slice, ...],
    ) -> list[Completion]:
        """The text the model continues each prompt with (``model.generate`` on ``tokenizer(prompt)``, decoded),
        one :class:`Completion` per prompt with the continuation as its one blank."""
        opts = ChatOptions.from_kwargs(**options)
        config: ChatGLMConfig = tokenizer.config
        out = []
        for prompt in prompts:
            ids = tokenizer.build_inputs(prompt)
            strategy = opts.build_strategy(config.end_token_ids, generator)
            new = generate_ids(runner, config, [ids], opts.length_limit(len(ids)), strategy, on_token)[0]
            new = [t for t in new if t not in config.end_token_ids]
            text = tokenizer.decode(new)
            out.append(
                Completion(prompt, [prompt + text], [[text]], [ids + new], [[(len(ids), len(ids) + len(new))]], True)
            )
        return out

    def check_messages(self, tokenizer: ChatGLMTokenizer, messages: Sequence[Mapping[str, Any]]) -> None:
        rounds_of(messages)

    def chat(
        self,
        runner: Any,
        tokenizer: ChatGLMTokenizer,
        messages: Sequence[Mapping[str, Any]],
        options: dict[str, object],
        generator: torch.Generator | None,
        on_text: Callable[[str], None] | None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        plain_content: bool = False,
        banned: tuple[slice, ...] = (),
    ) -> ChatReply:
        """The reply as ``model.chat`` gives it; ChatGLM-6B has no tools and no special tokens a user could type
        (``plain_content`` changes nothing), and bans nothing (its generation bans are none)."""
        if tools:
            raise InputError("ChatGLM-6B has no tool calling; use ChatGLM3-6B or GLM-4 for tools")
        query, history = rounds_of(messages)
        options_ = ChatOptions.from_kwargs(**options)
        return ChatReply(reply(runner, tokenizer, build_chat_prompt(query, history), options_, generator, on_text))

    def serving_chat(
        self,
        config: ChatGLMConfig,
        tokenizer: ChatGLMTokenizer,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        plain_content: bool,
    ) -> ServingPrompt:
        if tools:
            raise InputError("ChatGLM-6B has no tool calling; use ChatGLM3-6B or GLM-4 for tools")
        query, history = rounds_of(messages)
        ends = config.end_token_ids

        def text(new: Sequence[int]) -> str:
            return process_response(tokenizer.decode([t for t in new if t not in ends]))

        ids = tokenizer.build_inputs(build_chat_prompt(query, history))
        return ServingPrompt(ids, ends, text, reply=lambda new: ChatReply(text(new)))

    def serving_completion(self, config: ChatGLMConfig, tokenizer: ChatGLMTokenizer, prompt: str) -> CompletionRounds:
        ends = config.end_token_ids

        def text(new: Sequence[int]) -> str:
            return tokenizer.decode([t for t in new if t not in ends])

        generated = yield ServingPrompt(tokenizer.build_inputs(prompt), ends, text)
        return text(generated)


def read_chatglm_config(folder: Path) -> ChatGLMConfig:
    """``config.json``, with ``num_image_tokens`` from ``tokenizer_config.json`` when that file says it."""
    num_image_tokens = None
    tokenizer_config = folder / TOKENIZER_CONFIG_FILE_NAME
    if tokenizer_config.is_file():
        try:
            value = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("num_image_tokens")
        except (ValueError, AttributeError) as exc:
            raise ConfigError(f"{tokenizer_config} is not a JSON object: {exc}") from None
        num_image_tokens = value if isinstance(value, int) else None
    if not (folder / CONFIG_FILE_NAME).is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_FILE_NAME}; a ChatGLM Hugging Face folder needs one")
    return ChatGLMConfig.from_json_file(folder / CONFIG_FILE_NAME, num_image_tokens=num_image_tokens)


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
