"""Generation options with the reference CLI's names and defaults (``scripts/generate.sh``,
docs/glm-semantics.md#generation-defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from glm_engine.errors import InputError
from glm_engine.generation.option_types import check_option_types, check_seed
from glm_engine.generation.strategies import BaseStrategy, BeamSearchStrategy, beam_candidates_per_step

STRATEGIES = ("BaseStrategy", "BeamSearchStrategy")


@dataclass(frozen=True)
class GenerationOptions:
    """How to fill blanks; ``out_seq_length`` counts the prompt, as in the reference."""

    sampling_strategy: str = "BaseStrategy"
    out_seq_length: int = 256
    min_gen_length: int = 0  # beam search only, as in the reference
    num_beams: int = 4
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 3
    deterministic: bool = False  # beam search: top-k candidates instead of sampling them (evaluation uses True)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.7
    seed: int = 1234

    def __post_init__(self) -> None:
        check_option_types(self)
        if self.sampling_strategy not in STRATEGIES:
            raise InputError(
                f"sampling strategy must be one of {', '.join(STRATEGIES)}, got {self.sampling_strategy!r}"
            )
        checks = [
            (self.out_seq_length > 0, "out_seq_length must be > 0"),
            (self.min_gen_length >= 0, "min_gen_length must be >= 0"),
            (self.num_beams >= 1, "num_beams must be >= 1"),
            (
                self.no_repeat_ngram_size >= 0 and self.no_repeat_ngram_size != 1,
                "no_repeat_ngram_size must be 0 (off) or >= 2",
            ),
            (math.isfinite(self.length_penalty), "length_penalty must be a finite number"),
            (0 < self.temperature < math.inf, "temperature must be a finite number > 0"),
            (self.top_k >= 0, "top_k must be >= 0 (0 = off)"),
            (0.0 <= self.top_p <= 1.0, "top_p must be in [0, 1] (0 = off)"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        check_seed(self.seed)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> GenerationOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise InputError(f"unknown generation options {unknown}; known: {sorted(known)}")
        return cls(**kwargs)

    def check_fits(self, max_sequence_length: int, vocab_size: int, end_tokens: int, banned_ids: int = 0) -> None:
        """An InputError when a model cannot take these options: a longer sequence than its positions, or more beam
        candidates per step than the ``vocab_size - banned_ids`` tokens it may generate (checked before loading too,
        from the model's config)."""
        if self.out_seq_length > max_sequence_length:
            raise InputError(
                f"out_seq_length {self.out_seq_length} exceeds the model's maximum sequence length "
                f"{max_sequence_length}"
            )
        if self.sampling_strategy != "BeamSearchStrategy":
            return
        choices = vocab_size - banned_ids
        per_beam = beam_candidates_per_step(1, end_tokens)
        if per_beam * self.num_beams > choices:
            raise InputError(
                f"num_beams {self.num_beams} draws {per_beam * self.num_beams} candidate tokens per step ({per_beam} "
                f"per beam), more than the model's {choices} tokens; use at most {choices // per_beam} beams"
            )

    @property
    def beams(self) -> int:
        return self.num_beams if self.sampling_strategy == "BeamSearchStrategy" else 1

    def build_strategy(
        self,
        end_tokens: tuple[int, ...],
        invalid_slices: tuple[slice, ...] = (),
        generator: torch.Generator | None = None,
    ) -> BaseStrategy | BeamSearchStrategy:
        """A fresh strategy drawing from ``generator`` (default: one seeded with ``seed``); sampling runs on the
        CPU, so a seed gives the same tokens on every device."""
        generator = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        if self.sampling_strategy == "BeamSearchStrategy":
            return BeamSearchStrategy(
                self.num_beams,
                length_penalty=self.length_penalty,
                consider_end=True,
                end_tokens=end_tokens,
                invalid_slices=invalid_slices,
                no_repeat_ngram_size=self.no_repeat_ngram_size,
                min_gen_length=self.min_gen_length,
                deterministic=self.deterministic,
                generator=generator,
            )
        return BaseStrategy(
            self.temperature,
            self.top_k,
            self.top_p,
            end_tokens=end_tokens,
            invalid_slices=invalid_slices,
            generator=generator,
        )
