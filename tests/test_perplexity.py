"""Perplexity windows and normalisation, with a runner whose predictions are known exactly."""

import math

import pytest
import torch

from glm_engine.evaluation.datasets import word_count
from glm_engine.evaluation.perplexity import MAX_LOG_PPL, count_units, perplexity
from glm_engine.model.glm130b.config import preset
from glm_engine.tokenizer import builtin_tokenizer


class UniformRunner:
    """Predicts every token with probability 1/vocab and records what it was asked."""

    def __init__(self, max_sequence_length):
        self.config = preset("glm-tiny").with_overrides(max_sequence_length=max_sequence_length)
        self.device, self.dtype, self.calls = torch.device("cpu"), torch.float32, []

    def forward(self, input_ids, position_ids, blocked, cache=None, last_only=False):
        self.calls.append((input_ids[0].tolist(), position_ids[0].tolist(), blocked[0, 0].clone()))
        return torch.zeros(1, input_ids.shape[1], self.config.vocab_size)


@pytest.fixture(scope="module")
def tokenizer():
    return builtin_tokenizer()


def test_every_token_is_scored_once_across_sliding_windows(tokenizer):
    text = " ".join(f"word{i} and more" for i in range(200))
    runner = UniformRunner(max_sequence_length=64)
    result = perplexity(runner, tokenizer, text, generation_length=16, unit="tokens")
    n = len(tokenizer.encode(text))
    assert n > 3 * 63  # several windows
    assert result.num_tokens == n
    assert result.nll == pytest.approx(n * math.log(runner.config.vocab_size), rel=1e-6)
    assert result.token_ppl == pytest.approx(min(runner.config.vocab_size, math.exp(MAX_LOG_PPL)), rel=1e-5)
    layout = tokenizer.layout
    first_ids, _, _ = runner.calls[0]
    assert first_ids[:2] == [layout.gmask, layout.sop] and len(first_ids) == 64  # window 0: no prompt, 63 tokens
    later_ids, later_positions, later_blocked = runner.calls[1]
    assert len(later_ids) == 64 and later_ids[47:49] == [layout.gmask, layout.sop]  # 47 prompt tokens, 16 scored
    assert later_positions == list(range(64))
    assert not later_blocked[:48, :48].any() and later_blocked[:48, 48:].all()  # prompt + gMASK bidirectional
    assert later_blocked[50, 51] and not later_blocked[50, 49]  # the scored part is causal


def test_units_are_the_references_words_or_characters():
    # the reference's len(text.strip().split(" ")): a newline joins two words, a double space adds an empty one
    assert count_units(" two words\nand three ", "words") == 3
    assert count_units("two  words", "words") == 3
    assert count_units("two words\nand three", "words") == word_count("two words\nand three")
    assert count_units("床前 明月光", "chars") == 5
    with pytest.raises(ValueError, match="unit must be one of"):
        count_units("x", "bytes")
