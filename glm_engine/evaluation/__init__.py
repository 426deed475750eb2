"""Evaluation: how the reference scores a model (language-model perplexity now; task suites later)."""
