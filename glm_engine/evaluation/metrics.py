"""The metrics a task YAML can name (the reference's ``evaluation/metrics.py``), per task type.

Every metric takes the task's predictions and examples of one file and returns one number: percentages for
Accuracy, EM, F1, Precision, Recall and F1_mul, PPL for language models and bits per byte (BPB). The reference maps an
unknown metric name to a dummy that reports nothing; here it is a TaskError listing the known ones, and so is a metric
that does not fit the task type.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from glm_engine.errors import TaskError
from glm_engine.evaluation.config import TaskType
from glm_engine.evaluation.perplexity import bits_per_byte, capped_perplexity

Metric = Callable[[Sequence[Any], Sequence[Any]], float]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, target: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(target))


def token_f1(prediction: str, target: str) -> float:
    """Harmonic mean of precision and recall of the normalized whitespace tokens (shared tokens counted with
    multiplicity). As the reference's ``f1_score``: 0 whenever no token is shared, so two answers that both normalize
    to nothing (``"the"`` and ``"."``) score 0, not 1."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(target).split()
    shared = sum((Counter(predicted) & Counter(expected)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(expected)
    return 2 * precision * recall / (precision + recall)


def _best_over_targets(score: Callable[[str, str], float]) -> Metric:
    def metric(predictions: Sequence[str], examples: Sequence[Any]) -> float:
        total = sum(max(score(p, t) for t in e.target_texts) for p, e in zip(predictions, examples))
        return 100.0 * total / len(predictions)

    return metric


def string_accuracy(predictions: Sequence[str], examples: Sequence[Any]) -> float:
    """% of predictions equal to a target after stripping surrounding whitespace (LAMBADA's accuracy)."""
    hits = sum(any(p.strip() == t.strip() for t in e.target_texts) for p, e in zip(predictions, examples))
    return 100.0 * hits / len(predictions)


def choice_accuracy(predictions: Sequence[int], examples: Sequence[Any]) -> float:
    """% of predicted choice indices equal to the label."""
    return 100.0 * sum(p == e.label for p, e in zip(predictions, examples)) / len(predictions)


def _micro_counts(predictions: Sequence[int], examples: Sequence[Any]) -> tuple[int, int, int]:
    """True positives, false positives, false negatives summed over every class (single-label classification)."""
    classes = {e.label for e in examples} | set(predictions)
    tp = fp = fn = 0
    for cls in classes:
        for p, e in zip(predictions, examples):
            tp += p == cls and e.label == cls
            fp += p == cls and e.label != cls
            fn += p != cls and e.label == cls
    return tp, fp, fn


def micro_precision(predictions: Sequence[int], examples: Sequence[Any]) -> float:
    tp, fp, _ = _micro_counts(predictions, examples)
    return 100.0 * tp / (tp + fp) if tp + fp else 0.0


def micro_recall(predictions: Sequence[int], examples: Sequence[Any]) -> float:
    tp, _, fn = _micro_counts(predictions, examples)
    return 100.0 * tp / (tp + fn) if tp + fn else 0.0


def micro_f1(predictions: Sequence[int], examples: Sequence[Any]) -> float:
    precision, recall = micro_precision(predictions, examples), micro_recall(predictions, examples)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def perplexity_metric(predictions: Sequence[float], examples: Sequence[Any]) -> float:
    """Word-level PPL: total NLL over the documents' word counts, exponent capped at 20."""
    return capped_perplexity(sum(predictions), sum(e.num_words for e in examples))


def bpb_metric(predictions: Sequence[float], examples: Sequence[Any]) -> float:
    """Bits per UTF-8 byte of the raw text."""
    return bits_per_byte(sum(predictions), sum(e.num_bytes for e in examples))


METRICS: dict[str, dict[TaskType, Metric]] = {
    "Accuracy": {TaskType.MULTIPLE_CHOICE: choice_accuracy, TaskType.GENERATION: string_accuracy},
    "Precision": {TaskType.MULTIPLE_CHOICE: micro_precision},
    "Recall": {TaskType.MULTIPLE_CHOICE: micro_recall},
    "F1_mul": {TaskType.MULTIPLE_CHOICE: micro_f1},
    "EM": {TaskType.GENERATION: _best_over_targets(exact_match)},
    "F1": {TaskType.GENERATION: _best_over_targets(token_f1)},
    "PPL": {TaskType.LANGUAGE_MODEL: perplexity_metric},
    "BPB": {TaskType.LANGUAGE_MODEL: bpb_metric},
}


def resolve_metrics(names: Sequence[str], task_type: TaskType, where: str = "") -> dict[str, Metric]:
    """The metric functions for ``names`` on a task of ``task_type``; a TaskError for unknown or unfit names."""
    prefix = f"{where}: " if where else ""
    resolved = {}
    for name in names:
        if name not in METRICS:
            raise TaskError(f"{prefix}unknown metric {name!r}; metrics are {', '.join(METRICS)}")
        by_type = METRICS[name]
        if task_type not in by_type:
            fits = ", ".join(t.value for t in by_type)
            raise TaskError(f"{prefix}metric {name} applies to {fits} tasks, not {task_type.value}")
        resolved[name] = by_type[task_type]
    return resolved
