"""Evaluation metrics and the per-group statistics, against values computed by hand."""

import math
from types import SimpleNamespace

import pytest

from glm_engine.errors import TaskError
from glm_engine.evaluation.config import TaskType
from glm_engine.evaluation.datasets import Document
from glm_engine.evaluation.metrics import (
    METRICS,
    exact_match,
    normalize_answer,
    resolve_metrics,
    token_f1,
)
from glm_engine.evaluation.report import FileResult, TaskResult, summarize, to_json


def gen(*targets):
    return SimpleNamespace(target_texts=list(targets))


def mul(label):
    return SimpleNamespace(label=label)


def metric(name, task_type):
    return METRICS[name][task_type]


def test_squad_normalization_drops_case_punctuation_articles_and_extra_space():
    assert normalize_answer("  The  Cat, an Apple & a dog!  ") == "cat apple dog"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert exact_match("An apple.", "apple") == 1.0
    assert exact_match("apples", "apple") == 0.0


def test_f1_counts_shared_tokens_with_multiplicity():
    # prediction "red red blue" vs target "red green": shared = 1 (one red), P = 1/3, R = 1/2, F1 = 0.4
    assert token_f1("red red blue", "red green") == pytest.approx(0.4)
    # "the big red dog" -> [big, red, dog] vs "a red dog barks" -> [red, dog, barks]: shared 2, P = R = 2/3
    assert token_f1("the big red dog", "a red dog barks") == pytest.approx(2 / 3)
    assert token_f1("blue", "red") == 0.0
    # the reference's f1_score is 0 whenever nothing is shared, also when both normalize to nothing
    assert token_f1("the", "a") == 0.0
    assert token_f1("", ".") == 0.0
    assert metric("F1", TaskType.GENERATION)([""], [gen("The.")]) == 0.0
    assert token_f1("the", "cat") == 0.0


def test_em_and_f1_take_the_best_target_and_report_percent():
    predictions = ["an arrow", "big red dog"]
    examples = [gen("arrow", "bow"), gen("red dog", "cat")]
    em = metric("EM", TaskType.GENERATION)(predictions, examples)
    f1 = metric("F1", TaskType.GENERATION)(predictions, examples)
    assert em == pytest.approx(50.0)  # first matches "arrow", second matches nothing exactly
    # second: P = 2/3, R = 1 -> F1 = 0.8; mean of 1.0 and 0.8
    assert f1 == pytest.approx(90.0)


def test_generation_accuracy_compares_stripped_strings_without_normalizing():
    accuracy = metric("Accuracy", TaskType.GENERATION)
    assert accuracy([" sea ", "Sea"], [gen("sea"), gen("sea")]) == pytest.approx(50.0)


def test_choice_accuracy_and_micro_precision_recall_f1():
    predictions = [0, 1, 2, 2, 1]
    examples = [mul(0), mul(1), mul(1), mul(2), mul(0)]
    assert metric("Accuracy", TaskType.MULTIPLE_CHOICE)(predictions, examples) == pytest.approx(60.0)
    # micro over classes: TP = 3 correct; each wrong prediction is one FP (its class) and one FN (the label's)
    tp, fp, fn = 3, 2, 2
    assert metric("Precision", TaskType.MULTIPLE_CHOICE)(predictions, examples) == pytest.approx(100 * tp / (tp + fp))
    assert metric("Recall", TaskType.MULTIPLE_CHOICE)(predictions, examples) == pytest.approx(100 * tp / (tp + fn))
    assert metric("F1_mul", TaskType.MULTIPLE_CHOICE)(predictions, examples) == pytest.approx(60.0)


def test_ppl_is_word_level_with_the_exponent_capped_at_20():
    ppl = metric("PPL", TaskType.LANGUAGE_MODEL)
    docs = [Document([1] * 10, num_words=4, num_bytes=20), Document([1] * 5, num_words=6, num_bytes=12)]
    assert ppl([3.0, 7.0], docs) == pytest.approx(math.exp(10.0 / 10))
    assert ppl([500.0, 0.0], docs) == pytest.approx(math.exp(20.0))  # 50 nats per word, capped


def test_bits_per_byte_divides_nats_by_bytes_and_ln2():
    bpb = metric("BPB", TaskType.LANGUAGE_MODEL)
    docs = [Document([1], num_words=1, num_bytes=20), Document([1], num_words=1, num_bytes=12)]
    assert bpb([10.0, 6.0], docs) == pytest.approx(16.0 / 32 / math.log(2))


def test_unknown_or_unfit_metric_names_are_errors():
    with pytest.raises(TaskError, match="unknown metric 'BLEU'"):
        resolve_metrics(["BLEU"], TaskType.GENERATION)
    with pytest.raises(TaskError, match="PPL applies to lm tasks, not mul"):
        resolve_metrics(["PPL"], TaskType.MULTIPLE_CHOICE)
    assert list(resolve_metrics(["EM", "Accuracy"], TaskType.GENERATION)) == ["EM", "Accuracy"]


def test_groups_report_max_median_and_example_weighted_average():
    rows = [
        FileResult("stem", "a.jsonl", 10, {"Accuracy": 50.0}),
        FileResult("stem", "b.jsonl", 30, {"Accuracy": 90.0}),
        FileResult("stem", "c.jsonl", 60, {"Accuracy": 60.0}),
        FileResult("other", "d.jsonl", 100, {"Accuracy": 20.0}),
    ]
    result = TaskResult("mmlu", "mul", ["Accuracy"], rows)
    stem = result.groups["stem"]
    assert stem.num_examples == 100 and stem.num_rows == 3
    assert stem.stats["average"]["Accuracy"] == pytest.approx((500 + 2700 + 3600) / 100)
    assert stem.stats["median"]["Accuracy"] == pytest.approx(60.0)
    assert stem.stats["max"]["Accuracy"] == pytest.approx(90.0)
    assert result.overall.stats["average"]["Accuracy"] == pytest.approx((6800 + 2000) / 200)
    assert result.overall.stats["median"]["Accuracy"] == pytest.approx(55.0)  # even count: mean of the middle two
    assert summarize(rows[3:]).stats["max"]["Accuracy"] == 20.0
    assert '"overall"' in to_json([result], "m") and '"stem"' in to_json([result], "m")


def test_language_model_rows_are_weighted_by_their_windows():
    rows = [
        FileResult("all", "wiki.txt", 1, {"PPL": 10.0}, weight=30),
        FileResult("all", "ptb.txt", 1, {"PPL": 40.0}, weight=10),
    ]
    result = TaskResult("lm", "lm", ["PPL"], rows)
    assert result.overall.stats["average"]["PPL"] == pytest.approx((300 + 400) / 40)
    assert result.overall.num_examples == 2
    assert '"weight": 30' in to_json([result], "m")
