"""What the causal GLM families share (ChatGLM2/3 and GLM-4 in THUDM's remote-code layout, GLM-4 and GLM-4-0414 in
transformers' native layout): the block's parts, the rotary tables, causal positions and masks, plain continuation
and chat through the release's tokenizer.

A family folder (``model/chatglm2/``, ``model/glm4_hf/``) adds its names: config keys, weight keys and how its folder
is recognised. The numbers they share are in :class:`~glm_engine.model.causal_glm.config.CausalGLMConfig`
(``docs/families.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from glm_engine.generation.blank_filling import Completion
from glm_engine.generation.chat import ChatOptions, generate_replies
from glm_engine.generation.masks import AlignedBatch, GenerationRow, align_left
from glm_engine.model.causal_glm.config import CausalGLMConfig
from glm_engine.model.causal_glm.rotary import causal_rotary_table
from glm_engine.model.family import BlankTokens, Family, TokenCallback
from glm_engine.model.parts import Activation, BlockParts, DenseBias, Norm, QKVLayout, Residual, Rotary
from glm_engine.tokenizer.chat_tokenizer import ChatReply, ChatTokenizer

# chat()'s sampling defaults of ChatGLM2/3 and GLM-4's generation_config.json (max_length counts the prompt).
CHAT_DEFAULTS: dict[str, object] = {"max_length": 8192, "top_p": 0.8, "temperature": 0.8}


class CausalGLMFamily(Family):
    """The shared hooks; subclasses name their config type, weights, folder recognition and tokenizer release."""

    chat_model = True
    causal_lm = True

    def invalid_score_id(self, config: CausalGLMConfig) -> int:
        """The id InvalidScoreLogitsProcessor forces when a step's logits are NaN/inf (ChatGLM2/3: 5)."""
        return 5

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
            qkv=QKVLayout.GROUPED,
            kv_heads=config.num_kv_heads,
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
        top = min(config.vocab_size, 4000)
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
        """Each prompt continued as ``model.generate(**tokenizer(prompt))`` continues it (the tokenizer's prefix
        included), until an end token or the length limit; one :class:`Completion` per prompt."""
        opts = self.options(options)
        config: CausalGLMConfig = runner.config
        out = []
        for prompt in prompts:
            ids = tokenizer.encode(prompt)
            new = self._generate_ids(runner, config, ids, opts, config.end_token_ids, generator, on_token)
            new = [t for t in new if t not in config.end_token_ids]
            text = tokenizer.decode(new, skip_special_tokens=True)
            span = [(len(ids), len(ids) + len(new))]
            out.append(Completion(prompt, [prompt + text], [[text]], [ids + new], [span], True))
        return out

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

        self._generate_ids(runner, runner.config, ids, opts, stops, generator, stream)
        return tokenizer.parse_reply(generated, tools)

    def _generate_ids(
        self,
        runner: Any,
        config: CausalGLMConfig,
        ids: Sequence[int],
        opts: ChatOptions,
        stops: Sequence[int],
        generator: torch.Generator | None,
        on_token: TokenCallback | None,
    ) -> list[int]:
        strategy = opts.build_strategy(stops, generator, invalid_score_token=self.invalid_score_id(config))

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


def with_layers(config: CausalGLMConfig, num_layers: int | None) -> CausalGLMConfig:
    """``config`` with fewer layers (bench's reducible depth); unchanged when ``num_layers`` is None."""
    return config if num_layers is None else replace(config, num_layers=num_layers)


def folder_file(folder: Path, *names: str) -> Path | None:
    """The first of ``names`` that is a file in ``folder``."""
    return next((folder / n for n in names if (folder / n).is_file()), None)
