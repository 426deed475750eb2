"""transformers' ``clean_up_tokenization``: the spaces its slow tokenizers (on by default up to 4.44) and a
``tokenizer.json`` with ``clean_up_tokenization_spaces`` remove from decoded text."""

from __future__ import annotations

# (pattern, replacement), applied in this order.
CLEAN_UP_TOKENIZATION = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def clean_up_tokenization(text: str) -> str:
    """``text`` without the spaces transformers' clean-up removes."""
    for pattern, replacement in CLEAN_UP_TOKENIZATION:
        text = text.replace(pattern, replacement)
    return text
