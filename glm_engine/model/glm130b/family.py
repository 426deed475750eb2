"""GLM-130B as a family: its block's parts, weights, rotary table, prompt layout, tokenizer and blank filling.

DeepNorm residual on the LayerNorm output with ``alpha = sqrt(2 * num_layers)``, GeGLU MLP, 1-D rotary over the whole
head, SAT's row-parallel bias after the product, and the word embedding tied to the output (``docs/families.md``,
``docs/glm-semantics.md``). Checkpoints are SAT (any TP degree) or native sharded safetensors; the tokenizer is icetk's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from glm_engine.checkpoint import hf, native, sat
from glm_engine.generation.masks import AlignedBatch, GenerationRow, align_left
from glm_engine.model.family import BlankTokens, CompletionRounds, Family, ServingPrompt, TokenCallback
from glm_engine.model.glm130b.config import CONFORMANCE_CONFIG, PRESETS, GLMConfig
from glm_engine.model.glm130b.rotary import rotary_table
from glm_engine.model.glm130b.weights import random_state_dict, weight_layout
from glm_engine.model.parts import Activation, BlockParts, DenseBias, Rotary
from glm_engine.model.weights import WeightLayout, WeightReader


class GLM130BFamily(Family):
    name = "glm"
    title = "GLM-130B"
    config_type = GLMConfig
    blank_infilling = True

    def parts(self, config: GLMConfig) -> BlockParts:
        return BlockParts(
            activation=Activation.GEGLU,
            rotary=Rotary.WHOLE_HEAD,
            dense_bias=DenseBias.AFTER_PRODUCT,
            deepnorm_alpha=config.deepnorm_alpha,
        )

    def weight_layout(self, config: GLMConfig) -> WeightLayout:
        return weight_layout(config)

    def rotary_tables(
        self,
        config: GLMConfig,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        num_positions: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return rotary_table(config, dtype, device, num_positions)

    def blank_tokens(self, config: GLMConfig) -> BlankTokens:
        layout = config.vocab_layout
        text = range(layout.text_offset + 3, min(layout.mask, config.vocab_size))  # past <unk>, <s>, </s>
        return BlankTokens(layout.mask, layout.gmask, layout.sop, layout.pad, text)

    def conformance_config(self) -> GLMConfig:
        return CONFORMANCE_CONFIG

    def presets(self) -> Mapping[str, GLMConfig]:
        return PRESETS

    def config_to_dict(self, config: GLMConfig) -> dict[str, Any]:
        return config.to_dict()

    def config_from_dict(self, data: dict[str, Any], source: str) -> GLMConfig:
        return GLMConfig.from_dict(data, source)

    def exported_section(self, config: GLMConfig) -> dict[str, Any]:
        layout = config.vocab_layout
        return {
            "config": config.to_dict(),
            "bos_token_id": layout.sop,
            "eos_token_id": [layout.eos, layout.eop],
            "pad_token_id": layout.pad,
            "special_tokens": layout.to_dict(),
            "position_ids_shape": ["batch_size", "sequence_length"],
        }

    def config_from_exported(self, section: dict[str, Any], source: str) -> GLMConfig:
        return GLMConfig.from_dict(section["config"], source=source)

    def recognises(self, folder: Path) -> bool:
        """A SAT folder, or a native one (its config.json has GLM-130B's keys, no Hugging Face ``model_type``)."""
        if hf.model_type(folder) is not None:
            return False
        return native.is_native_checkpoint(folder) or sat.is_sat_checkpoint(folder)

    def open_checkpoint(self, folder: Path, config: GLMConfig | None) -> WeightReader:
        from glm_engine.checkpoint.reader import open_checkpoint

        return open_checkpoint(folder, config)

    def state_dict_reader(self, state_dict: Mapping[str, Any], config: GLMConfig, source: str) -> WeightReader:
        from glm_engine.checkpoint.layout import infos_of, validate
        from glm_engine.model.state_dict import StateDictReader

        unused = validate(infos_of(state_dict), config, 1, None, source)
        return StateDictReader(weight_layout(config), state_dict, source, unused, config=config)

    def random_state_dict(self, config: GLMConfig, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
        return random_state_dict(config, seed, dtype)

    def load_tokenizer(self, config: GLMConfig, path: str | Path | None, folder: Path | None, random: bool) -> Any:
        from glm_engine.tokenizer import builtin_tokenizer, load_tokenizer

        if random and path is None:
            return builtin_tokenizer(config.vocab_layout)
        return load_tokenizer(path, config.vocab_layout, folder)

    def check_tokenizer(self, config: GLMConfig, tokenizer: Any, random: bool) -> None:
        """icetk's text pieces, placed at ``text_offset``, fill the layout's text ids exactly: up to its first special
        id (eos is a text piece by design). Random weights may use a smaller packaged tokenizer."""
        from glm_engine.errors import TokenizerError

        text, layout = tokenizer.text_id_range, config.vocab_layout
        specials = [i for i in layout.special_tokens.values() if i != layout.eos]
        room = min([i for i in specials if i >= text.start] + [config.vocab_size])
        fits = text.stop <= room if random else text.stop == room
        if not fits:
            raise TokenizerError(
                f"{tokenizer.model_path} has {len(text)} text pieces (ids {text.start}..{text.stop - 1}) but the "
                f"model's vocabulary layout has {room - text.start} (ids {text.start}..{room - 1}): it is not this "
                "model's tokenizer (GLM-130B's is icetk's 130000-piece text model); pass the right one with --tokenizer"
            )

    def generation_bans(self, config: GLMConfig, tokenizer: Any, random: bool) -> tuple[slice, ...]:
        """Random weights produce any id: keep their noise readable by banning ids the tokenizer cannot decode."""
        if not random:
            return ()
        text = tokenizer.text_id_range
        return (slice(0, text.start), slice(text.stop, config.vocab_size))

    def prompt_inputs(self, config: GLMConfig, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GLM's generation layout per row: everything up to ``sop`` attends bidirectionally; from ``sop`` on
        tokens see the context and, causally, each other, at the blank's position (``[MASK]``/``[sMASK]``) or at
        running positions (``[gMASK]``). A row without ``sop`` is all context."""
        from glm_engine.generation.masks import generation_blocked, generation_positions

        layout, (batch, length) = config.vocab_layout, input_ids.shape
        positions = torch.empty(batch, length, dtype=torch.long)
        blocked = torch.empty(batch, 1, length, length, dtype=torch.bool)
        for row, ids in enumerate(input_ids.tolist()):
            context = ids.index(layout.sop) + 1 if layout.sop in ids else length + 1
            prompt = ids[: context - 1]
            mask = next((m for m in (layout.mask, layout.smask, layout.gmask) if m in prompt), None)
            at = prompt.index(mask) if mask is not None else 0
            positions[row] = generation_positions(context, length, at, mask in (None, layout.gmask))
            blocked[row, 0] = generation_blocked(context, length)
        return positions, blocked

    def generation_batch(
        self, config: GLMConfig, prompts: Sequence[Sequence[int]], budgets: Sequence[int]
    ) -> AlignedBatch:
        """Rows as ``fill_blanks`` builds them: each filling its first ``[MASK]``, else ``[sMASK]``, else continuing
        its ``[gMASK]``; left-aligned (``align_left``)."""
        layout, rows = config.vocab_layout, []
        for ids in prompts:
            mask = next((m for m in (layout.mask, layout.smask, layout.gmask) if m in ids), layout.gmask)
            at = list(ids).index(mask) if mask in ids else 0
            rows.append(GenerationRow(list(ids), at, mask == layout.gmask))
        return align_left(rows, max(len(ids) for ids in prompts) + max(budgets), layout.pad, budgets)

    def continuation_inputs(
        self, config: GLMConfig, batch: int, context: int, total: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A ``[gMASK]`` continuation: positions run on, the prompt is bidirectional."""
        from glm_engine.generation.masks import generation_blocked

        positions = torch.arange(total).expand(batch, total).contiguous()
        return positions, generation_blocked(context, total)[None, None]

    def generate(
        self,
        runner: Any,
        tokenizer: Any,
        prompts: Sequence[str],
        options: dict[str, object],
        on_token: TokenCallback | None,
        generator: torch.Generator | None,
        banned: tuple[slice, ...],
    ) -> list[Any]:
        """Fill the blanks of each prompt (``[MASK]``, ``[sMASK]``, or continue with ``[gMASK]``), as the reference's
        ``generate.py``; ``options`` are :class:`~glm_engine.generation.options.GenerationOptions` fields."""
        from glm_engine.generation.blank_filling import fill_blanks
        from glm_engine.generation.options import GenerationOptions

        parsed = GenerationOptions.from_kwargs(**options)
        return fill_blanks(runner, tokenizer, list(prompts), parsed, on_token, banned, generator)

    def serving_completion(self, config: GLMConfig, tokenizer: Any, prompt: str) -> CompletionRounds:
        """Blank filling as ``fill_blanks`` does it for one prompt and one beam: each blank in turn, generated with the
        blanks before it filled; returns the whole text with every blank filled (``[gMASK]``: the continuation)."""
        from glm_engine.generation.blank_filling import plan_prompt

        plan = plan_prompt(prompt, tokenizer, config.max_sequence_length)
        layout, best = tokenizer.layout, list(plan.tokens)
        ends = tuple(layout.end_tokens)

        def text(new: Sequence[int]) -> str:
            return tokenizer.decode([t for t in new if t not in ends])

        continuation: list[int] = []
        while plan.mask_id in best:
            at = best.index(plan.mask_id)
            generated = yield ServingPrompt(best + [layout.sop], ends, text, continues_text=plan.gmask)
            continuation = [t for t in generated if t not in ends]
            best = best[:at] + continuation + best[at + 1 :]
        if plan.gmask:
            return text(continuation)
        return tokenizer.decode(best[:-1] if best and best[-1] == layout.eos else best)
