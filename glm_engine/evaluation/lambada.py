"""LAMBADA as the reference scores it (docs/evaluation.md#lambada): predict the last word of a passage.

Beam search bans punctuation: every punctuation character that is one token is never generated, and the tokens of
every punctuation character are banned as a prefix of the answer (a multi-token prefix when a beam's last tokens
match its start). With GLM-130B's vocabulary the reference's own icetk ids are banned too. Greedy decoding bans
nothing (the reference swaps its banning strategy in for BeamSearchStrategy only). The prediction is the first word
of the first beam whose second word is punctuation (else beam 0), split as the reference splits; accuracy compares
it, stripped, with the stripped target.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from typing import Any

import torch

from glm_engine.engine import Engine
from glm_engine.evaluation.datasets import GenerationExample
from glm_engine.evaluation.generation import answer_tokens, beam_options
from glm_engine.evaluation.tasks import GenerationTask, Progress
from glm_engine.generation.strategies import FILTER_VALUE, BeamSearchStrategy
from glm_engine.model.glm130b.vocab import VocabLayout
from glm_engine.tokenizer import GLMTokenizer

# G:tasks/lambada/task.py: icetk ids it never generates and first tokens it bans, for GLM-130B's vocabulary only.
ICETK_INVALID_IDS = (20068, 146010, 146337)
ICETK_BANNED_PREFIXES = ((46010,), (146337,))


def punctuation_bans(tokenizer: GLMTokenizer) -> tuple[list[int], list[tuple[int, ...]]]:
    """Ids never to generate and token prefixes banned at the start of the answer."""
    invalid: list[int] = []
    prefixes: list[tuple[int, ...]] = []
    if tokenizer.layout == VocabLayout():
        invalid.extend(ICETK_INVALID_IDS)
        prefixes.extend(ICETK_BANNED_PREFIXES)
    for char in string.punctuation:
        ids = tuple(tokenizer.encode(char))
        if len(ids) == 1:
            invalid.append(ids[0])
        if ids:
            prefixes.append(ids)
    return invalid, prefixes


class LambadaBeamSearch(BeamSearchStrategy):
    """Beam search that bans each prefix's last token where a beam has just generated the rest of it."""

    def __init__(self, banned_prefixes: Sequence[tuple[int, ...]], **beam_options: Any) -> None:
        super().__init__(**beam_options)
        self.banned_prefixes = [tuple(p) for p in banned_prefixes]

    def step(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.clone()
        for prefix in self.banned_prefixes:
            if self._length_generated != len(prefix) - 1:
                continue
            for row, beams in enumerate(self._beams):
                for beam, generated in enumerate(beams):
                    if tuple(generated) == prefix[:-1]:
                        logits[row, beam, prefix[-1]] = FILTER_VALUE
        return super().step(logits)


def choose_word(beam_texts: Sequence[str]) -> str:
    """The first word of the first beam whose second word is punctuation, else of beam 0, as the reference does it:
    words are ``text.strip().split(" ")`` (a newline does not split), and "is punctuation" is a substring test on
    ``string.punctuation`` (so an empty word between two spaces counts, ``".,"`` does not)."""

    def words(text: str) -> list[str]:
        return text.strip().split(" ")

    chosen = next((t for t in beam_texts if len(words(t)) >= 2 and words(t)[1] in string.punctuation), beam_texts[0])
    return words(chosen)[0]


class LambadaTask(GenerationTask):
    """The reference's ``tasks.lambada.task.LAMBADA``: a ``gen`` task whose metric is Accuracy."""

    default_metrics = ("Accuracy",)

    def new_strategy(self, engine: Engine) -> Callable[[], object]:
        if self.config.sampling_strategy != "BeamSearchStrategy":  # greedy: the plain generation strategy, no bans
            return super().new_strategy(engine)
        invalid_ids, prefixes = punctuation_bans(engine.tokenizer)
        options = beam_options(self.config, engine.tokenizer.layout, (*engine.banned_tokens, *invalid_ids))
        return lambda: LambadaBeamSearch(prefixes, **options)

    def predict(self, engine: Engine, examples: Sequence[GenerationExample], progress: Progress) -> list[str]:
        end = engine.tokenizer.layout.end_tokens
        return [
            choose_word([engine.tokenizer.decode(answer_tokens(b, end)) for b in beams])
            for beams in self.generate_beams(engine, examples, progress)
        ]
