"""What the causal GLM families share (ChatGLM2/3 and GLM-4 in THUDM's remote-code layout, GLM-4 and GLM-4-0414 in
transformers' native layout): the block's parts, the rotary tables, causal positions and masks, plain continuation
and chat through the release's tokenizer.

A family folder (``model/chatglm2/``, ``model/glm4_hf/``) adds its names: config keys, weight keys and how its folder
is recognised. The numbers they share are in :class:`~glm_engine.model.causal_glm.config.CausalGLMConfig`
(``docs/families.md``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from glm_engine.checkpoint.hf import CONFIG_FILE_NAME, open_hf_checkpoint
from glm_engine.errors import CheckpointError, InputError, TokenizerError
from glm_engine.generation.blank_filling import Completion
from glm_engine.generation.chat import ChatOptions, generate_replies
from glm_engine.generation.masks import AlignedBatch, GenerationRow, align_left
from glm_engine.model.causal_glm.config import CausalGLMConfig
from glm_engine.model.causal_glm.rotary import causal_rotary_table
from glm_engine.model.family import BlankTokens, CompletionRounds, Family, ServingPrompt, TokenCallback
from glm_engine.model.hf_reader import ReleaseReader
from glm_engine.model.hf_release import ReleaseSpec
from glm_engine.model.parts import Activation, BlockParts, DenseBias, Norm, QKVLayout, Residual, Rotary
from glm_engine.model.weights import WeightLayout, WeightReader, scaled_noise
from glm_engine.tokenizer.chat_tokenizer import ChatReply, ChatTokenizer

# Layout tools (conformance, verify, bench) draw plain text ids from below this; every GLM tokenizer has them.
TEXT_IDS = 4000
# InvalidScoreLogitsProcessor's forced id in ChatGLM2/3's code (GLM-4's: ``GLM4_INVALID_SCORE_ID``).
INVALID_SCORE_ID = 5
GLM4_INVALID_SCORE_ID = 198
# chat()'s sampling defaults of ChatGLM2/3 and GLM-4's generation_config.json (max_length counts the prompt).
CHAT_DEFAULTS: dict[str, object] = {"max_length": 8192, "top_p": 0.8, "temperature": 0.8}


class CausalGLMFamily(Family):
    """The shared hooks; subclasses name their config type, weights, folder recognition and tokenizer release."""

    chat_model = True
    causal_lm = True

    def invalid_score_id(self, config: CausalGLMConfig) -> int:
        """The id InvalidScoreLogitsProcessor forces when a step's logits are NaN/inf (ChatGLM2/3: 5)."""
        return INVALID_SCORE_ID

    # --- the description ------------------------------------------------------------------------------------------
    def parts(self, config: CausalGLMConfig) -> BlockParts:
        return BlockParts(
            activation=Activation.SWIGLU,
            rotary=Rotary.PARTIAL_INTERLEAVED,
            dense_bias=DenseBias.FUSED,
            norm=Norm.RMSNORM,
            residual=Residual.PRENORM,
            norm_weight_in_fp32=config.norm_weight_in_fp32,
            post_branch_norm=config.branch_norms,
            qkv=QKVLayout.PER_HEAD if config.qkv_per_head else QKVLayout.GROUPED,
            kv_heads=None if config.qkv_per_head else config.num_kv_heads,
            rotary_dims=config.rotary_dims,
            layer_scaled_attention=False,
        )

    def rotary_tables(
        self,
        config: CausalGLMConfig,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        num_positions: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return causal_rotary_table(config, dtype, device, num_positions)

    def blank_tokens(self, config: CausalGLMConfig) -> BlankTokens:
        """These models have no blanks to fill: the ids tools lay prompts out with are plain text ids (the last
        three stand in for the mask, ``[gMASK]`` and the start of generation, which a causal mask treats alike)."""
        top = min(config.vocab_size, TEXT_IDS)
        return BlankTokens(top - 3, top - 2, top - 1, config.pad_token_id, range(3, top - 3))

    def config_to_dict(self, config: CausalGLMConfig) -> dict[str, Any]:
        return config.to_dict()

    def config_from_dict(self, data: dict[str, Any], source: str) -> CausalGLMConfig:
        return self.config_type.from_dict(data, source)

    def exported_section(self, config: CausalGLMConfig) -> dict[str, Any]:
        return {
            "config": config.to_dict(),
            "eos_token_id": list(config.eos_token_ids),
            "pad_token_id": config.pad_token_id,
            "position_ids_shape": ["batch_size", "sequence_length"],
        }

    def config_from_exported(self, section: dict[str, Any], source: str) -> CausalGLMConfig:
        return self.config_type.from_dict(section["config"], source)

    # --- what each family names ---------------------------------------------------------------------------------
    @abstractmethod
    def config_from_folder(self, folder: Path) -> CausalGLMConfig:
        """The config of a checkpoint folder (its ``config.json`` in the release's names)."""

    @abstractmethod
    def release_spec(self, config: CausalGLMConfig) -> ReleaseSpec:
        """How the release's files hold the layout (key names, fused parts, the quantized form)."""

    @abstractmethod
    def tokenizer_release(self, config: CausalGLMConfig) -> str:
        """Which chat tokenizer reads the release's files (``load_chat_tokenizer``'s release)."""

    @abstractmethod
    def tiny_tokenizer(self, config: CausalGLMConfig) -> Path:
        """The packaged tokenizer random presets of this release use."""

    # --- weights and tokenizer, from those names ----------------------------------------------------------------
    def weight_layout(self, config: CausalGLMConfig) -> WeightLayout:
        return self.release_spec(config).layout

    def open_checkpoint(self, folder: Path, config: CausalGLMConfig | None) -> WeightReader:
        if config is not None:
            raise InputError("a config override goes with a preset (random weights), not a checkpoint folder")
        if not (folder / CONFIG_FILE_NAME).is_file():
            raise CheckpointError(f"{folder} has no {CONFIG_FILE_NAME}; a {self.title} folder needs one")
        config = self.config_from_folder(folder)
        checkpoint = open_hf_checkpoint(folder)
        description = f"{config.release} {checkpoint.describe()}"
        return ReleaseReader(self.release_spec(config), description, checkpoint=checkpoint, config=config)

    def state_dict_reader(self, state_dict: Mapping[str, Any], config: CausalGLMConfig, source: str) -> WeightReader:
        return ReleaseReader(self.release_spec(config), source, state_dict=state_dict, config=config)

    def random_state_dict(
        self, config: CausalGLMConfig, seed: int, dtype: torch.dtype = torch.float32
    ) -> dict[str, Any]:
        """Seeded random weights under the release's file names (``weights.scaled_noise``: activations O(1))."""
        gen = torch.Generator().manual_seed(seed)
        shapes = self.release_spec(config).file_shapes()
        return {key: scaled_noise(key, torch.randn(shape, generator=gen)).to(dtype) for key, shape in shapes.items()}

    def load_tokenizer(
        self, config: CausalGLMConfig, path: str | Path | None, folder: Path | None, random: bool
    ) -> ChatTokenizer:
        """The release's tokenizer: ``path`` (a file or its folder), else the checkpoint folder's own; a random preset
        falls back to the packaged tiny tokenizer of its release."""
        from glm_engine.tokenizer.chat_loading import load_chat_tokenizer

        if path is None and folder is None:
            if not random:
                raise TokenizerError("no tokenizer: pass --tokenizer PATH (glm-engine never downloads one)")
            path = self.tiny_tokenizer(config)
        return load_chat_tokenizer(Path(path) if path is not None else folder, self.tokenizer_release(config))

    def check_tokenizer(self, config: CausalGLMConfig, tokenizer: ChatTokenizer, random: bool) -> None:
        """The tokenizer's ids must fit the (padded) vocabulary and its end-of-text id be one of the config's."""
        problem = None
        if tokenizer.vocab_size > config.vocab_size:
            problem = f"produces {tokenizer.vocab_size} ids but the model has {config.vocab_size} rows"
        elif config.eos_token_ids and tokenizer.eos_id not in config.eos_token_ids:
            eos = list(config.eos_token_ids)
            problem = f"ends text with id {tokenizer.eos_id} but the config's eos_token_id is {eos}"
        if problem:
            raise TokenizerError(
                f"the tokenizer {tokenizer.name} {problem}: it belongs to another model; pass the model's own with "
                "--tokenizer (its folder holds it)"
            )

    # --- inputs ---------------------------------------------------------------------------------------------------
    def generation_bans(self, config: CausalGLMConfig, tokenizer: ChatTokenizer, random: bool) -> tuple[slice, ...]:
        """Random weights produce any id: keep their noise decodable by banning the padded rows past the tokenizer's
        ids (real weights ban nothing, as the references do not)."""
        if not random or tokenizer.vocab_size >= config.vocab_size:
            return ()
        return (slice(tokenizer.vocab_size, config.vocab_size),)

    def prompt_inputs(self, config: CausalGLMConfig, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions ``0 .. s-1`` per row and a causal mask: every token sees itself and the ones before it."""
        batch, length = input_ids.shape
        return causal_layout(batch, length)

    def generation_batch(
        self, config: CausalGLMConfig, prompts: Sequence[Sequence[int]], budgets: Sequence[int]
    ) -> AlignedBatch:
        """Left-padded prompts; each row's positions start at 0 on its first token (pads are blocked), as the
        references' tokenizers pad on the left with position ids restarting per row."""
        rows = [GenerationRow(list(ids), 0, gmask=True, causal=True) for ids in prompts]
        total = max(len(ids) for ids in prompts) + max(budgets)
        return align_left(rows, total, config.pad_token_id, budgets)

    def continuation_inputs(
        self, config: CausalGLMConfig, batch: int, context: int, total: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        positions, blocked = causal_layout(batch, total)
        return positions, blocked[:1]

    # --- generation -----------------------------------------------------------------------------------------------
    def options(self, options: Mapping[str, object]) -> ChatOptions:
        """The release's ``chat()`` defaults under the caller's options."""
        return ChatOptions.from_kwargs(**{**CHAT_DEFAULTS, **options})

    def generate(
        self,
        runner: Any,
        tokenizer: ChatTokenizer,
        prompts: Sequence[str],
        options: dict[str, object],
        on_token: TokenCallback | None,
        generator: torch.Generator | None,
        banned: tuple[slice, ...],
    ) -> list[Completion]:
        """Each prompt continued after the tokenizer's encoding (its prefix included), until the config's end tokens or
        the length limit, sampled with the release's ``chat()`` defaults unless ``options`` say otherwise (pass
        ``do_sample=False`` for transformers' greedy ``generate``); one :class:`Completion` per prompt."""
        opts = self.options(options)
        config: CausalGLMConfig = runner.config
        out = []
        for prompt in prompts:
            ids = tokenizer.encode(prompt)
            new = self._generate_ids(runner, config, ids, opts, config.end_token_ids, generator, on_token, banned)
            new = [t for t in new if t not in config.end_token_ids]
            text = tokenizer.decode(new, skip_special_tokens=True)
            span = [(len(ids), len(ids) + len(new))]
            out.append(Completion(prompt, [prompt + text], [[text]], [ids + new], [span], True))
        return out

    def check_messages(self, tokenizer: ChatTokenizer, messages: Sequence[Mapping[str, Any]]) -> None:
        tokenizer.apply_chat_template(messages)

    def chat(
        self,
        runner: Any,
        tokenizer: ChatTokenizer,
        messages: Sequence[Mapping[str, Any]],
        options: dict[str, object],
        generator: torch.Generator | None,
        on_text: Callable[[str], None] | None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        plain_content: bool = False,
        banned: tuple[slice, ...] = (),
    ) -> ChatReply:
        """The assistant's reply to OpenAI-style ``messages`` (and ``tools``) as the release's chat path builds the
        prompt, stopping at the release's end tokens; a tool call comes back structured (``ChatReply.tool_calls``)."""
        opts = self.options(options)
        ids = tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, plain_content=plain_content
        )
        stops = tuple(tokenizer.stop_ids)
        generated: list[int] = []

        def stream(_step: int, tokens: list[list[int]], _parents: list[list[int]]) -> None:
            token = tokens[0][0]
            if token < 0 or token in stops:
                return
            generated.append(token)
            if on_text is not None:
                on_text(tokenizer.decode(generated, skip_special_tokens=True))

        self._generate_ids(runner, runner.config, ids, opts, stops, generator, stream, banned)
        return tokenizer.parse_reply(generated, tools)

    def serving_chat(
        self,
        config: CausalGLMConfig,
        tokenizer: ChatTokenizer,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        plain_content: bool,
    ) -> ServingPrompt:
        ids = tokenizer.apply_chat_template(messages, tools=tools, plain_content=plain_content)
        stops = tuple(tokenizer.stop_ids)
        return ServingPrompt(
            ids,
            stops,
            text=lambda new: tokenizer.decode([t for t in new if t not in stops], skip_special_tokens=True),
            reply=lambda new: tokenizer.parse_reply([t for t in new if t not in stops], tools),
        )

    def serving_completion(self, config: CausalGLMConfig, tokenizer: ChatTokenizer, prompt: str) -> CompletionRounds:
        ends = config.end_token_ids

        def text(new: Sequence[int]) -> str:
            return tokenizer.decode([t for t in new if t not in ends], skip_special_tokens=True)

        generated = yield ServingPrompt(tokenizer.encode(prompt), ends, text)
        return text(generated)

    def _generate_ids(
        self,
        runner: Any,
        config: CausalGLMConfig,
        ids: Sequence[int],
        opts: ChatOptions,
        stops: Sequence[int],
        generator: torch.Generator | None,
        on_token: TokenCallback | None,
        banned: tuple[slice, ...] = (),
    ) -> list[int]:
        strategy = opts.build_strategy(stops, generator, self.invalid_score_id(config), banned)

        def build(prompts: Sequence[Sequence[int]], budgets: Sequence[int]) -> AlignedBatch:
            return self.generation_batch(config, prompts, budgets)

        limit = opts.length_limit(len(ids))
        return generate_replies(runner, build, [list(ids)], limit, strategy, config.pad_token_id, on_token)[0]


def causal_layout(batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``[batch, length]`` counting from 0 and the causal mask ``[batch, 1, length, length]`` (True =
    blocked)."""
    positions = torch.arange(length).expand(batch, length).contiguous()
    blocked = torch.ones(length, length, dtype=torch.bool).triu(1)
    return positions, blocked.expand(batch, 1, length, length).contiguous()
