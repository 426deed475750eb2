"""The task interface and the built-in tasks (LAMBADA's is in :mod:`glm_engine.evaluation.lambada`; which task a
YAML's ``module`` picks is :mod:`glm_engine.evaluation.registry`'s).

A task reads one data file into examples, predicts them with the engine, and may split a file's results into
labelled subsets (Pile's ``pile_set_name``). Metrics are the runner's job (:mod:`glm_engine.evaluation.metrics`), so
a task of a type gets every metric of that type.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from glm_engine.engine import Engine
from glm_engine.errors import TaskError
from glm_engine.evaluation import datasets
from glm_engine.evaluation.causal import ContentTokenizer, causal_choice_room, encode_causal_choice, iter_causal_windows
from glm_engine.evaluation.config import DEFAULT_METRICS, TaskConfig, TaskType
from glm_engine.evaluation.generation import (
    answer_tokens,
    build_strategy,
    encode_generation,
    generate,
    truncate_generation_text,
)
from glm_engine.evaluation.multiple_choice import encode_multiple_choice, predict, score_choices, text_room
from glm_engine.evaluation.perplexity import iter_lm_windows, num_windows, window_nlls

Progress = Callable[[int], None]


def reader_tokenizer(engine: Engine) -> Any:
    """What the task readers tokenize with: GLM's tokenizer, or a causal release's without its prefix (the
    encodings add it)."""
    return ContentTokenizer(engine.tokenizer) if engine.family.causal_lm else engine.tokenizer


@contextmanager
def _at(where: str) -> Iterator[None]:
    """Prefix a TaskError raised inside with ``where`` (file:line)."""
    try:
        yield
    except TaskError as exc:
        raise TaskError(f"{where}: {exc}") from None


class EvaluationTask(ABC):
    """One YAML task. Subclasses set ``task_type`` and implement :meth:`load_examples` and :meth:`predict`."""

    task_type: ClassVar[TaskType]
    default_metrics: ClassVar[tuple[str, ...]] = ()  # empty: the type's (DEFAULT_METRICS)

    def __init__(self, config: TaskConfig) -> None:
        self.config = config

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The YAML's metrics, else the task's defaults."""
        return self.config.metrics or self.default_metrics or DEFAULT_METRICS[self.task_type]

    def max_length(self, engine: Engine) -> int:
        """The task's ``max_seq_length``, at most the model's context."""
        return min(self.config.max_seq_length, engine.config.max_sequence_length)

    @abstractmethod
    def load_examples(self, path: Path, engine: Engine) -> list[Any]:
        """The examples of one data file (a TaskError naming file:line for a bad one)."""

    @abstractmethod
    def predict(self, engine: Engine, examples: Sequence[Any], progress: Progress) -> list[Any]:
        """One prediction per example, in order; ``progress(n)`` after every ``n`` examples done."""

    def check(self, engine: Engine, examples: Sequence[Any]) -> None:
        """A TaskError (naming file:line) for an example :meth:`predict` cannot encode; the runner calls it on every
        file before scoring any. The default checks nothing."""
        return None

    def weights(self, engine: Engine, examples: Sequence[Any]) -> list[int]:
        """Each example's weight in the group and overall averages (default: 1; the reference weights files by the
        size of their dataset)."""
        return [1] * len(examples)

    def subsets(self, examples: Sequence[Any]) -> dict[str, list[int]]:
        """Labelled subsets of a file's examples that are reported as rows of their own (default: the whole file)."""
        return {"": list(range(len(examples)))}


class MultipleChoiceTask(EvaluationTask):
    """``mul``: the highest-scoring choice (summed log-probabilities) against ``label``."""

    task_type = TaskType.MULTIPLE_CHOICE

    def load_examples(self, path: Path, engine: Engine) -> list[datasets.MultipleChoiceExample]:
        return datasets.read_multiple_choice(path, reader_tokenizer(engine), engine.config.vocab_size)

    def check(self, engine: Engine, examples: Sequence[datasets.MultipleChoiceExample]) -> None:
        length = self.max_length(engine)
        tokenizer = reader_tokenizer(engine)
        for example in examples:
            with _at(example.where):
                if not engine.family.causal_lm:
                    text_room(example.choices, length)
                else:
                    causal_choice_room(tokenizer.prefix, example.choices, length)

    def predict(
        self, engine: Engine, examples: Sequence[datasets.MultipleChoiceExample], progress: Progress
    ) -> list[int]:
        return [predict(scores) for scores in self.choice_scores(engine, examples, progress)]

    def choice_scores(
        self, engine: Engine, examples: Sequence[datasets.MultipleChoiceExample], progress: Progress | None = None
    ) -> list[list[float]]:
        """Each example's per-choice log-probability sums."""
        c, length = self.config, self.max_length(engine)
        if engine.family.causal_lm:  # a causal release: its prefix, the text, each choice continuing it
            tokenizer = reader_tokenizer(engine)
            causal = [encode_causal_choice(tokenizer.prefix, e.text, e.choices, length) for e in examples]
            return score_choices(engine.forward, causal, tokenizer.pad_id, c.micro_batch_size, progress)
        layout = engine.tokenizer.layout
        samples = [
            encode_multiple_choice(e.text, e.choices, layout, c.use_task_mask, c.unidirectional, length)
            for e in examples
        ]
        return score_choices(engine.forward, samples, layout.pad, c.micro_batch_size, progress)


class GenerationTask(EvaluationTask):
    """``gen``: the decoded answer of each example (greedy or beam search) against its targets."""

    task_type = TaskType.GENERATION

    def load_examples(self, path: Path, engine: Engine) -> list[datasets.GenerationExample]:
        if engine.family.causal_lm:
            raise TaskError(
                f"{self.config.source or self.config.name}: generation tasks fill GLM blanks with GLM-130B's options; "
                f"{engine.family.title} is causal: evaluate it on multiple-choice (mul) and language-model (lm) tasks"
            )
        return datasets.read_generation(path, engine.tokenizer, engine.config.vocab_size)

    def check(self, engine: Engine, examples: Sequence[datasets.GenerationExample]) -> None:
        c, layout, length = self.config, engine.tokenizer.layout, self.max_length(engine)
        for example in examples:
            with _at(example.where):
                truncate_generation_text(
                    example.text, layout, c.use_task_mask, c.unidirectional, c.max_gen_length, length
                )

    def predict(self, engine: Engine, examples: Sequence[datasets.GenerationExample], progress: Progress) -> list[str]:
        layout = engine.tokenizer.layout
        return [
            engine.tokenizer.decode(answer_tokens(beams[0], layout.end_tokens))
            for beams in self.generate_beams(engine, examples, progress)
        ]

    def generate_beams(
        self, engine: Engine, examples: Sequence[datasets.GenerationExample], progress: Progress | None = None
    ) -> list[list[list[int]]]:
        """Per example, the strategy's beams, best first."""
        c, layout = self.config, engine.tokenizer.layout
        length = self.max_length(engine)
        prompts = [
            encode_generation(e.text, layout, c.use_task_mask, c.unidirectional, c.max_gen_length, length)
            for e in examples
        ]
        return generate(
            engine.runner,
            prompts,
            c.max_gen_length,
            self.new_strategy(engine),
            layout.pad,
            c.micro_batch_size,
            progress,
        )

    def new_strategy(self, engine: Engine) -> Callable[[], Any]:
        """A factory of fresh strategies for each decode loop."""
        return lambda: build_strategy(self.config, engine.tokenizer.layout, engine.banned_tokens)


class LanguageModelTask(EvaluationTask):
    """``lm``: every matched file is one document (WikiText/PTB style); its summed NLL over sliding windows."""

    task_type = TaskType.LANGUAGE_MODEL

    def load_examples(self, path: Path, engine: Engine) -> list[datasets.Document]:
        return [datasets.read_raw_document(path, reader_tokenizer(engine))]

    def check(self, engine: Engine, examples: Sequence[datasets.Document]) -> None:
        window = self.text_window(engine)
        if not self.config.generation_length < window:
            raise TaskError(
                f"{self.config.source or self.config.name}: generation_length {self.config.generation_length} must be "
                f"below the window of {window} text tokens (from max_seq_length, at most the model's context)"
            )

    def predict(self, engine: Engine, examples: Sequence[datasets.Document], progress: Progress) -> list[float]:
        """Each document's summed NLL. The windows of all documents are scored together, ``micro_batch_size`` per
        forward (as the reference's dataset flattens them), and summed per document."""
        self.check(engine, examples)
        c, window = self.config, self.text_window(engine)
        counts = [num_windows(len(d.tokens), window, c.generation_length) for d in examples]
        owners = [index for index, count in enumerate(counts) for _ in range(count)]
        windows, pad = self._windows(engine, examples, window)
        last_windows = set(itertools.accumulate(counts))  # progress counts documents: done after their last window
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            progress(sum(1 for i in range(done + 1, done + n + 1) if i in last_windows))
            done += n

        nlls = [0.0] * len(examples)
        for owner, nll in zip(owners, window_nlls(engine.forward, windows, pad, c.micro_batch_size, advance)):
            nlls[owner] += nll
        return nlls

    def text_window(self, engine: Engine) -> int:
        """Text tokens per window: ``max_seq_length - 1`` (GLM's mask and sop take two of the ``max_seq_length``
        columns, and the last text token is not fed), or what a causal release's prefix leaves of ``max_seq_length``
        plus that unfed token."""
        if not engine.family.causal_lm:
            return self.max_length(engine) - 1
        return self.max_length(engine) + 1 - len(reader_tokenizer(engine).prefix)

    def _windows(self, engine: Engine, examples: Sequence[datasets.Document], window: int) -> tuple[Iterator, int]:
        """Every document's windows in order, encoded for the model's kind, and the pad id."""
        c = self.config
        if engine.family.causal_lm:  # causal windows after the release's prefix
            prefix = reader_tokenizer(engine).prefix
            windows = (w for d in examples for w in iter_causal_windows(prefix, d.tokens, window, c.generation_length))
            return windows, engine.tokenizer.pad_id
        layout = engine.tokenizer.layout
        mask_id = layout.gmask if c.use_task_mask else layout.mask
        windows = (
            w
            for d in examples
            for w in iter_lm_windows(d.tokens, window, c.generation_length, mask_id, layout.sop, c.unidirectional)
        )
        return windows, layout.pad

    def weights(self, engine: Engine, examples: Sequence[datasets.Document]) -> list[int]:
        """The reference weights a language-model file by its number of windows."""
        window = self.text_window(engine)
        return [num_windows(len(d.tokens), window, self.config.generation_length) for d in examples]


class PileTask(LanguageModelTask):
    """Pile-style jsonl, one document per line, reported per ``meta.pile_set_name`` (BPB by default)."""

    default_metrics = ("BPB",)

    def load_examples(self, path: Path, engine: Engine) -> list[datasets.Document]:
        return datasets.read_pile(path, reader_tokenizer(engine), engine.config.vocab_size)

    def subsets(self, examples: Sequence[datasets.Document]) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for index, document in enumerate(examples):
            groups.setdefault(document.subset, []).append(index)
        return dict(sorted(groups.items()))
