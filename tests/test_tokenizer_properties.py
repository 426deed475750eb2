"""Every tokenizer the bundled assets reach encodes and decodes any text without crashing, and round-trips as far as
its vocabulary allows (issue 18).

The tokenizers: GLM-130B's icetk-style SentencePiece (the packaged test model, and the demo model's own), ChatGLM-6B's,
ChatGLM2's and ChatGLM3's (on the 4000-piece test model), GLM-4's tiktoken ranks and its ``tokenizer.json`` (the tiny
GLM-4 folders). What holds, each pinned by a test below:

* **All**: any ``str`` encodes to ids inside the vocabulary and decodes to a ``str``, a string of 200,000 characters
  included; text that is not valid Unicode (a lone surrogate, as bytes that are not UTF-8 become when read with
  ``surrogateescape``) is an ``InputError``, never a library crash, and so is what is not a ``str`` (``None``, an int,
  bytes); ``decode`` takes any ints, ids past the vocabulary included, NumPy and torch integers alike, and refuses
  what is not an integer (``1.5``, ``True``, ``None``, a string, bytes) with an ``InputError`` instead of reading it
  as some id.
* **GLM-4, tiktoken and tokenizer.json** (byte-level BPE): ``decode(encode(s)) == s`` for every valid string, typed
  special strings included (cut out as their ids and written back); with special tokens, ``"[gMASK]<sop>" + s``.
* **GLM-130B, ChatGLM2, ChatGLM3** (SentencePiece with the ``nmt_nfkc`` normalizer, no byte fallback): for text made
  of the vocabulary's characters (those of its pieces that NFKC keeps, combining marks aside) and spaces, tabs and
  newlines, ``decode(encode(s)) == " ".join(s.split())``: SentencePiece folds every whitespace run into one space and
  trims the ends. GLM-130B with ``ignore_linebreak=False`` keeps the newlines (``<n>``). ChatGLM3 with special tokens
  decodes to ``"[gMASK]sop " + that`` (the first piece's word boundary becomes a space after the prefix).
  Weaker, outside that vocabulary: NFKC applies (``Ａ`` -> ``A``, ``ﬁ`` -> ``fi``), control characters vanish, and a
  character without a piece becomes ``<unk>`` (``" ⁇ "`` in GLM-130B's decode; nothing in ChatGLM2/3's, where unk is
  the pad id). For text without ``<unk>`` ids, one encode-decode pass is a fixed point. GLM-130B decodes a typed
  ``<n>`` as a newline, as icetk does, so such text is left out.
* **ChatGLM-6B** keeps whitespace (newlines, tabs and runs of 2..80 spaces have their own pieces): words of the
  vocabulary joined by any runs of spaces, tabs and newlines decode to ``clean_up_tokenization(s)`` (transformers'
  clean-up, on in the reference: no space before ``. , ! ?`` and in English contractions). Weaker: a single space at
  either end is dropped by SentencePiece, and the typed strings ``<n>``, ``<|tab|>``, ``<|blank_N|>`` decode as
  whitespace and ``<sop> <eop> <unk> <pad> [MASK]`` become special ids, as in the reference, so text holding them is
  left out.
* **Chat templates** (ChatGLM2/3, GLM-4): with ``plain_content``, a message's typed special strings never become
  special ids.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from glm_engine.errors import InputError
from glm_engine.model.chatglm.config import chatglm_preset
from glm_engine.model.glm130b.vocab import VocabLayout
from glm_engine.tokenizer import (
    BUILTIN_TOKENIZER_PATH,
    TINY_GLM4_HF_TOKENIZER,
    TINY_GLM4_TOKENIZER,
    TINY_SENTENCEPIECE_MODEL,
    GLMTokenizer,
    builtin_tokenizer,
    load_chat_tokenizer,
)
from glm_engine.tokenizer.chatglm import ChatGLMTokenizer
from glm_engine.tokenizer.cleanup import clean_up_tokenization

DEMO_MODEL = Path(BUILTIN_TOKENIZER_PATH).parents[1] / "demo_model"
SENTENCEPIECE_MODELS = {
    "glm130b": BUILTIN_TOKENIZER_PATH,
    "demo": DEMO_MODEL / "ice_text.model",
    "chatglm6b": BUILTIN_TOKENIZER_PATH,
    "chatglm2": TINY_SENTENCEPIECE_MODEL,
    "chatglm3": TINY_SENTENCEPIECE_MODEL,
}
CHAT = ("chatglm2", "chatglm3", "glm4", "hf")
PREFIX = ("[gMASK]", "sop")  # what every chat tokenizer puts first with special tokens
ALL = ("glm130b", "demo", "chatglm6b", *CHAT)
# Bounded and reproducible: the same examples on every run, no example database written.
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None)

# Pieces of text that break tokenizers: NUL and other controls, zero-width and line/paragraph separators, a BOM,
# combining marks, emoji with modifiers, ZWJ sequences and flags, CJK, whitespace runs (longer than ChatGLM-6B's 80),
# CRLF, compatibility forms NFKC rewrites, the GLM releases' special strings and whitespace pieces, the private-use
# brackets chat templates use as placeholders, the spaces transformers' clean-up removes, and lone surrogates.
FRAGMENTS = (
    "\x00",
    "\x01",
    "\x1b[0m",
    "\x7f",
    "\x9f",
    "\u200b",
    "\u2028",
    "\ufeff",
    "e\u0301",
    "\u0308",
    "😀",
    "👍🏽",
    "👨\u200d👩\u200d👧",
    "🇨🇳",
    "中文",
    "清华大学",
    "〇",
    " ",
    "  ",
    " " * 81,
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "\u3000",
    "\xa0",
    "Ａ",
    "ﬁ",
    "①",
    "<|user|>",
    "<|endoftext|>",
    "[gMASK]",
    "[MASK]",
    "<sop>",
    "sop",
    "<n>",
    "<|tab|>",
    "<|blank_3|>",
    "\ue000",
    "\ue0000\ue001",
    " .",
    " n't",
    "Hello",
    " world",
    "\ud800",
    "\udfff",
)
any_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(st.characters(exclude_categories=[]), max_size=6)), max_size=8
).map("".join)


def is_valid_unicode(text: str) -> bool:
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


valid_text = any_text.filter(is_valid_unicode)


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, object]:
    demo_layout = json.loads((DEMO_MODEL / "config.json").read_text(encoding="utf-8"))["vocab_layout"]
    return {
        "glm130b": builtin_tokenizer(),
        "demo": GLMTokenizer(DEMO_MODEL / "ice_text.model", VocabLayout(**demo_layout)),
        "chatglm6b": ChatGLMTokenizer(BUILTIN_TOKENIZER_PATH, chatglm_preset("chatglm-tiny")),
        "chatglm2": load_chat_tokenizer(TINY_SENTENCEPIECE_MODEL, "chatglm2"),
        "chatglm3": load_chat_tokenizer(TINY_SENTENCEPIECE_MODEL, "chatglm3"),
        "glm4": load_chat_tokenizer(TINY_GLM4_TOKENIZER, "glm4"),
        "hf": load_chat_tokenizer(TINY_GLM4_HF_TOKENIZER, "hf"),
    }


def encode(name: str, tokenizer, text: str) -> list[int]:
    """The plain ids of ``text``: no prefix, no mask parsing."""
    return tokenizer.encode(text, add_special_tokens=False) if name in CHAT else tokenizer.encode(text)


def id_limit(name: str, tokenizer) -> int:
    """One past the largest id ``encode`` may produce."""
    if name in CHAT:
        return tokenizer.vocab_size
    if name == "chatglm6b":  # typed special strings become the config's ids, past the pieces in the test model
        return max(tokenizer.vocab_size, *(i + 1 for i in tokenizer.special_ids.values()))
    return max(tokenizer.text_id_range.stop, *(i + 1 for i in tokenizer.special_ids))


@functools.cache
def vocabulary_characters(model: Path) -> list[str]:
    """The characters of a SentencePiece model's text pieces that NFKC keeps as they are (combining marks, the word
    boundary mark and whitespace aside): what any text built from them is spelled with."""
    sp = spm.SentencePieceProcessor(model_file=str(model))
    pieces = (sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i)))
    characters = set("".join(pieces)) - {"▁"}
    return sorted(
        c
        for c in characters
        if c.isprintable()
        and not c.isspace()
        and not unicodedata.combining(c)
        and unicodedata.normalize("NFKC", c) == c
    )


def vocabulary_text(name: str, whitespace: str = " \t\n") -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(vocabulary_characters(SENTENCEPIECE_MODELS[name]) + list(whitespace)), max_size=40)


@pytest.mark.parametrize("name", ALL)
@PROPERTY
@given(text=any_text)
def test_any_text_encodes_to_known_ids_and_decodes_or_is_an_input_error(tokenizers, name, text):
    tokenizer = tokenizers[name]
    if not is_valid_unicode(text):
        with pytest.raises(InputError, match="lone surrogate"):
            encode(name, tokenizer, text)
        return
    ids = encode(name, tokenizer, text)
    assert all(isinstance(i, int) and 0 <= i < id_limit(name, tokenizer) for i in ids)
    assert isinstance(tokenizer.decode(ids), str)
    if name in CHAT:
        assert tokenizer.encode(text)[len(PREFIX) :] == ids
        assert isinstance(tokenizer.decode(ids, skip_special_tokens=True), str)
    elif name != "chatglm6b":
        assert isinstance(tokenizer.decode(tokenizer.tokenize_prompt(text)), str)
        assert isinstance(tokenizer.decode(tokenizer.encode(text, ignore_linebreak=False)), str)


@pytest.mark.parametrize("name", ALL)
@PROPERTY
@given(data=st.data())
def test_decode_takes_any_ids(tokenizers, name, data):
    tokenizer = tokenizers[name]
    limit = id_limit(name, tokenizer)
    ids = data.draw(st.lists(st.one_of(st.integers(-3, limit + 3), st.integers(-(2**70), 2**70)), max_size=12))
    assert isinstance(tokenizer.decode(ids), str)
    if name in CHAT:
        assert isinstance(tokenizer.decode(ids, skip_special_tokens=True), str)


@pytest.mark.parametrize("name", ["glm4", "hf"])
@PROPERTY
@given(text=valid_text)
def test_byte_level_tokenizers_round_trip_every_string(tokenizers, name, text):
    tokenizer = tokenizers[name]
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert tokenizer.decode(tokenizer.encode(text)) == "[gMASK]<sop>" + text


@pytest.mark.parametrize("name", ["glm130b", "demo", "chatglm2", "chatglm3"])
@PROPERTY
@given(data=st.data())
def test_sentencepiece_round_trip_folds_whitespace(tokenizers, name, data):
    tokenizer = tokenizers[name]
    text = data.draw(vocabulary_text(name).filter(lambda s: "<n>" not in s), label="text")
    folded = " ".join(text.split())
    assert tokenizer.decode(encode(name, tokenizer, text)) == folded
    if name == "chatglm3":
        assert tokenizer.decode(tokenizer.encode(text)) == "[gMASK]sop" + (" " + folded if folded else "")


@pytest.mark.parametrize("name", ["glm130b", "demo"])
@PROPERTY
@given(data=st.data())
def test_glm130b_keeps_newlines_when_asked(tokenizers, name, data):
    """icetk's ``ignore_linebreak=False``: only runs of spaces and tabs fold, and only at the ends of the text."""
    text = data.draw(vocabulary_text(name).filter(lambda s: "<n>" not in s), label="text")
    ids = tokenizers[name].encode(text, ignore_linebreak=False)
    assert tokenizers[name].decode(ids) == re.sub("[ \t]+", " ", text).strip(" \t")


# What NFKC rewrites or drops; none of it is <unk> in the test models.
NORMALIZED = ("Ａ", "ﬁ", "①", "\u3000", "\xa0", "\r\n", "\u200b", "\x01", "\x7f", "\ufeff", "  \t\n")
UNKNOWN_ID = {"glm130b": 20000, "demo": 0, "chatglm2": 0, "chatglm3": 0}


@pytest.mark.parametrize("name", ["glm130b", "demo", "chatglm2", "chatglm3"])
@PROPERTY
@given(data=st.data())
def test_sentencepiece_decode_is_a_fixed_point_after_one_pass(tokenizers, name, data):
    """Normalization happens once: for text without <unk> ids (whose decode leaves a word boundary behind), decoding
    what was encoded and encoding it again changes nothing."""
    tokenizer = tokenizers[name]
    pieces = st.one_of(vocabulary_text(name, whitespace=" "), st.sampled_from(NORMALIZED))
    text = data.draw(st.lists(pieces, max_size=6).map("".join).filter(lambda s: "<n>" not in s), label="text")
    ids = encode(name, tokenizer, text)
    assert UNKNOWN_ID[name] not in ids, "the strategy draws only what the vocabulary spells"
    once = tokenizer.decode(ids)
    assert tokenizer.decode(encode(name, tokenizer, once)) == once


CHATGLM6B_TYPED_PIECES = ("<n>", "<|tab|>", "<|blank_", "<sop>", "<eop>", "<unk>", "<pad>", "[MASK]")


@st.composite
def words_joined_by_whitespace(draw) -> str:
    words = st.text(st.sampled_from(vocabulary_characters(SENTENCEPIECE_MODELS["chatglm6b"])), min_size=1, max_size=6)
    parts = draw(st.lists(words, min_size=1, max_size=6))
    runs = [draw(st.text(st.sampled_from(" \t\n"), min_size=1, max_size=90)) for _ in parts[1:]]
    return parts[0] + "".join(run + word for run, word in zip(runs, parts[1:]))


@PROPERTY
@given(text=words_joined_by_whitespace().filter(lambda s: not any(p in s for p in CHATGLM6B_TYPED_PIECES)))
def test_chatglm6b_keeps_every_whitespace_run(tokenizers, text):
    tokenizer = tokenizers["chatglm6b"]
    assert tokenizer.decode(tokenizer.encode(text)) == clean_up_tokenization(text)


def special_ids(tokenizers, name: str, ids: list[int]) -> list[int]:
    """The special ids among ``ids`` (the native GLM-4 folder has the remote one's, a test of test_glm_tokenizers)."""
    specials = set(tokenizers["glm4" if name == "hf" else name].special_ids.values())
    return [i for i in ids if i in specials]


@pytest.mark.parametrize("name", CHAT)
@PROPERTY
@given(text=any_text.filter(bool))  # an empty message is left out of the prompt, as in the reference
def test_typed_specials_in_a_message_never_become_special_ids_with_plain_content(tokenizers, name, text):
    tokenizer = tokenizers[name]
    if not is_valid_unicode(text):
        with pytest.raises(InputError, match="lone surrogate"):
            tokenizer.apply_chat_template([{"role": "user", "content": text}], plain_content=True)
        return
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], plain_content=True)
    plain = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], plain_content=True)
    assert special_ids(tokenizers, name, ids) == special_ids(tokenizers, name, plain)


NOT_TEXT = (None, 123, 1.5, b"Hello", bytearray(b"Hello"), ["Hello"])


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("value", NOT_TEXT, ids=lambda v: type(v).__name__)
def test_what_is_not_text_is_an_input_error_naming_the_argument(tokenizers, name, value):
    hint = ": decode bytes first" if isinstance(value, (bytes, bytearray)) else ""
    with pytest.raises(InputError, match=f"^text to encode must be a str, got {type(value).__name__}{hint}$"):
        encode(name, tokenizers[name], value)
    if name in ("glm130b", "demo"):
        with pytest.raises(InputError, match=r"^prompt must be a str"):
            tokenizers[name].tokenize_prompt(value)


@pytest.mark.parametrize("name", ALL)
@PROPERTY
@given(data=st.binary(max_size=24))
def test_bytes_read_with_surrogateescape_are_text_or_an_input_error(tokenizers, name, data):
    """What ``run``/``chat`` read from a terminal: bytes that are UTF-8 encode, any other byte is an ``InputError``
    naming where it is (Python's own strict decode is the judge)."""
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_at = len(data[: exc.start].decode("utf-8"))
        with pytest.raises(InputError, match=f"lone surrogate .* at index {bad_at} "):
            encode(name, tokenizers[name], text)
        return
    ids = encode(name, tokenizers[name], text)
    assert all(0 <= i < id_limit(name, tokenizers[name]) for i in ids)
    if name in ("glm4", "hf"):
        assert tokenizers[name].decode(ids).encode("utf-8") == data


# 200,000 characters: every valid fragment above, then runs that are worst cases for BPE merges and whitespace pieces.
VALID_FRAGMENTS = "".join(f for f in FRAGMENTS if is_valid_unicode(f))
HUGE_TEXT = (VALID_FRAGMENTS * (100_000 // len(VALID_FRAGMENTS) + 1))[:100_000] + "a" * 50_000 + " " * 25_000
HUGE_TEXT += "中" * 25_000


@pytest.mark.parametrize("name", ALL)
def test_huge_text_encodes_to_known_ids(tokenizers, name):
    tokenizer = tokenizers[name]
    assert len(HUGE_TEXT) == 200_000
    ids = encode(name, tokenizer, HUGE_TEXT)
    assert len(ids) > 50_000 and all(0 <= i < id_limit(name, tokenizer) for i in ids)
    decoded = tokenizer.decode(ids)
    if name in ("glm4", "hf"):
        assert decoded == HUGE_TEXT
    else:
        assert decoded.endswith("中" * 25_000)


NOT_IDS = ([1.5], [True], [None], ["7"], [7, 2.0], b"ab", "ab", None, 5, torch.tensor(5), torch.tensor([1.0]))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("ids", NOT_IDS, ids=repr)
def test_decode_refuses_what_is_not_an_integer(tokenizers, name, ids):
    with pytest.raises(InputError, match=r"^ids to decode"):
        tokenizers[name].decode(ids)


@pytest.mark.parametrize("name", ALL)
def test_decode_reads_numpy_and_torch_integers_as_ints(tokenizers, name):
    tokenizer = tokenizers[name]
    ids = encode(name, tokenizer, "Hello 清华大学")
    assert tokenizer.decode(ids) != ""
    for same in (np.array(ids), np.array(ids, dtype=np.int32), torch.tensor(ids), [torch.tensor(i) for i in ids]):
        assert tokenizer.decode(same) == tokenizer.decode(ids)
