"""The chat tokenizers of ChatGLM2/3, GLM-4 (remote) and native GLM-4 folders give the references' ids and text.

References: ``sentencepiece`` itself plus the special-id rules of ChatGLM2/3's ``tokenization_chatglm.py`` (for the
SentencePiece tokenizers), transformers loading a ``tokenizer.json`` of the same ranks (for GLM-4's tiktoken
tokenizer), and transformers' ``AutoTokenizer`` on the same folder (for native folders). transformers is only needed
here, so those tests skip without it.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm

from glm_engine.errors import InputError, TokenizerError
from glm_engine.tokenizer.chat_loading import (
    TINY_GLM4_HF_TOKENIZER,
    TINY_GLM4_TOKENIZER,
    TINY_SENTENCEPIECE_MODEL,
    detect_release,
    load_chat_tokenizer,
)

MIXED_TEXTS = (
    "Hello, world! The quick brown fox.",
    "你好，世界！今天天气很好，我们一起去公园散步吧。",
    "def square(x):\n    return x ** 2  # comment\n\n\tif x: pass\r\n",
    "emoji 😀🎉👍🏽 and accents café naïve Ω≈ç√",
    "runs   of    spaces\n\n\n   and trailing   ",
    "typed specials <|user|> [gMASK] sop <sop> <|assistant|>hi<|observation|>",
    "I'm sure they'll say it's fine; WE'VE 12345678 3.14159",
    "",
    " ",
    "[[训练时间]]",
)
GLM4_TINY_SPECIALS = {"<|endoftext|>": 4000, "[gMASK]": 4002, "<sop>": 4004, "<|user|>": 4007, "<|assistant|>": 4008}


@pytest.fixture(scope="module")
def sp() -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(TINY_SENTENCEPIECE_MODEL))


@pytest.fixture(scope="module")
def reference_fast():
    """transformers reading the native folder's tokenizer.json (the same ranks as the remote folder's)."""
    transformers = pytest.importorskip("transformers")
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(TINY_GLM4_HF_TOKENIZER / "tokenizer.json"))


@pytest.fixture(scope="module")
def reference_auto():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(TINY_GLM4_HF_TOKENIZER))


# --- ChatGLM2 / ChatGLM3 (SentencePiece) -----------------------------------------------------------------------


def test_sentencepiece_specials_follow_the_pieces_in_the_release_order():
    chatglm2 = load_chat_tokenizer(TINY_SENTENCEPIECE_MODEL, "chatglm2")
    chatglm3 = load_chat_tokenizer(TINY_SENTENCEPIECE_MODEL, "chatglm3")
    assert chatglm2.special_ids == {"[MASK]": 4000, "[gMASK]": 4001, "[sMASK]": 4002, "sop": 4003, "eop": 4004}
    assert [chatglm3.special_ids[r] for r in ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")] == [
        4005,
        4006,
        4007,
        4008,
    ]
    assert (chatglm2.vocab_size, chatglm3.vocab_size) == (4005, 4009)
    assert (chatglm2.eos_id, chatglm2.pad_id, chatglm2.stop_ids) == (2, 0, (2,))
    assert chatglm3.stop_ids == (2, 4006, 4008)


@pytest.mark.parametrize("release", ["chatglm2", "chatglm3"])
def test_sentencepiece_encode_is_the_prefix_then_sentencepiece_ids(release, sp):
    tokenizer = load_chat_tokenizer(TINY_SENTENCEPIECE_MODEL, release)
    for text in MIXED_TEXTS:
        assert tokenizer.encode(text) == [4001, 4003, *sp.encode(text)], text
        assert tokenizer.encode(text, add_special_tokens=False) == sp.encode(text), text


def test_chatglm2_decode_drops_specials_and_chatglm3_names_them(sp):
    chatglm2 = load_chat_tokenizer(TINY_SENTENCEPIECE_MODEL, "chatglm2")
    chatglm3 = load_chat_tokenizer(TINY_SENTENCEPIECE_MODEL, "chatglm3")
    hello = sp.encode("hello x")
    assert chatglm2.decode([4001, 4003, *hello, 4004, 2]) == "hello x"
    assert chatglm3.decode([4001, 4003, 4006, *hello, 2]) == "[gMASK]sop<|user|> hello x"
    assert chatglm3.decode([4001, 4003, 4006, *hello], skip_special_tokens=True) == "hello x"
    for text in MIXED_TEXTS:  # unk is also the pad id, which the reference renders as nothing
        known = [i for i in sp.encode(text) if i != sp.unk_id()]
        assert chatglm2.decode(chatglm2.encode(text)) == sp.decode(known), text


def test_sentencepiece_decode_ignores_ids_past_the_vocabulary(sp):
    chatglm3 = load_chat_tokenizer(TINY_SENTENCEPIECE_MODEL, "chatglm3")
    assert chatglm3.decode([*sp.encode("hello"), 4009, 4095, -1]) == "hello"


def test_chatglm3_added_tokens_of_the_config_are_cut_out(tmp_path, sp):
    shutil.copy(TINY_SENTENCEPIECE_MODEL, tmp_path / "tokenizer.model")
    added = {
        str(i): {"content": s, "special": False} for i, s in [(4001, "[gMASK]"), (4003, "sop"), (4006, "<|user|>")]
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": added}))
    tokenizer = load_chat_tokenizer(tmp_path, "chatglm3")
    assert tokenizer.encode("a<|user|>b <|system|>", add_special_tokens=False) == [
        *sp.encode("a"),
        4006,
        *sp.encode("b <|system|>"),
    ]


def test_a_config_that_contradicts_the_model_is_refused(tmp_path):
    shutil.copy(TINY_SENTENCEPIECE_MODEL, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"64795": "<|user|>"}}))
    with pytest.raises(TokenizerError, match="different releases"):
        load_chat_tokenizer(tmp_path, "chatglm3")


def test_a_piece_spelled_like_a_special_becomes_the_special_as_in_the_reference(tmp_path):
    """``_convert_token_to_id`` maps pieces by name: a SentencePiece piece ``sop`` gets the special's id."""
    writer = io.BytesIO()
    corpus = ["Worksop is a town", "people stop and shop", "sop eop sop"] * 20
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=writer,
        vocab_size=40,
        model_type="bpe",
        user_defined_symbols=["sop"],
        minloglevel=2,
        num_threads=1,
    )
    (tmp_path / "tokenizer.model").write_bytes(writer.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=writer.getvalue())
    tokenizer = load_chat_tokenizer(tmp_path, "chatglm2")
    sop = tokenizer.special_ids["sop"]
    pieces = sp.encode("Worksop", out_type=str)
    assert "sop" in pieces
    assert tokenizer.encode("Worksop", add_special_tokens=False) == [
        sop if p == "sop" else sp.piece_to_id(p) for p in pieces
    ]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Worksop"}])
    plain = tokenizer.apply_chat_template([{"role": "user", "content": "Worksop"}], plain_content=True)
    assert sop in prompt[2:] and sop not in plain[2:]


# --- GLM-4 remote (tiktoken) --------------------------------------------------------------------------------------


def test_glm4_specials_and_stop_ids():
    glm4 = load_chat_tokenizer(TINY_GLM4_TOKENIZER, "glm4")
    assert {name: glm4.special_ids[name] for name in GLM4_TINY_SPECIALS} == GLM4_TINY_SPECIALS
    assert (glm4.vocab_size, glm4.eos_id, glm4.pad_id, glm4.stop_ids) == (4014, 4000, 4000, (4000, 4007, 4009))


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_glm4_tiktoken_ids_equal_transformers_on_the_same_ranks(reference_fast, add_special_tokens):
    glm4 = load_chat_tokenizer(TINY_GLM4_TOKENIZER, "glm4")
    for text in MIXED_TEXTS:
        expected = reference_fast(text, add_special_tokens=add_special_tokens)["input_ids"]
        assert glm4.encode(text, add_special_tokens=add_special_tokens) == expected, text


def test_glm4_typed_specials_become_special_ids():
    glm4 = load_chat_tokenizer(TINY_GLM4_TOKENIZER, "glm4")
    ids = glm4.encode("a<|user|>b", add_special_tokens=False)
    assert ids == [*glm4.encode("a", False), 4007, *glm4.encode("b", False)]


def test_glm4_decode_writes_specials_without_spaces_and_equals_transformers(reference_fast):
    glm4 = load_chat_tokenizer(TINY_GLM4_TOKENIZER, "glm4")
    ids = glm4.encode("<|user|>\n你好 😀<|assistant|>hi")
    assert glm4.decode(ids) == "[gMASK]<sop><|user|>\n你好 😀<|assistant|>hi"
    assert glm4.decode(ids, skip_special_tokens=True) == "\n你好 😀hi"
    for text in MIXED_TEXTS:
        ids = glm4.encode(text)
        for skip in (False, True):
            assert glm4.decode(ids, skip_special_tokens=skip) == reference_fast.decode(ids, skip_special_tokens=skip)
    assert glm4.decode([*glm4.encode("ok", False), 4014, 4095]) == "ok"


def test_glm4_decode_replaces_a_broken_character():
    glm4 = load_chat_tokenizer(TINY_GLM4_TOKENIZER, "glm4")
    ids = glm4.encode("😀", add_special_tokens=False)
    assert glm4.decode(ids[:-1]).endswith("\ufffd")


def test_a_damaged_rank_file_is_a_tokenizer_error(tmp_path):
    lines = (TINY_GLM4_TOKENIZER / "tokenizer.model").read_text().splitlines()
    (tmp_path / "tokenizer.model").write_text("\n".join(lines[:300] + lines[301:]) + "\n")
    with pytest.raises(TokenizerError, match="without gaps"):
        load_chat_tokenizer(tmp_path, "glm4")


# --- native folders (tokenizer.json) ------------------------------------------------------------------------------


def test_native_folder_encode_and_decode_equal_autotokenizer(reference_auto):
    hf = load_chat_tokenizer(TINY_GLM4_HF_TOKENIZER, "hf")
    for text in MIXED_TEXTS:
        for add in (True, False):
            assert hf.encode(text, add_special_tokens=add) == reference_auto(text, add_special_tokens=add)["input_ids"]
        ids = hf.encode(text)
        for skip in (False, True):
            assert hf.decode(ids, skip_special_tokens=skip) == reference_auto.decode(ids, skip_special_tokens=skip)


def test_native_and_remote_tiny_folders_share_ids():
    hf = load_chat_tokenizer(TINY_GLM4_HF_TOKENIZER, "hf")
    glm4 = load_chat_tokenizer(TINY_GLM4_TOKENIZER, "glm4")
    assert (hf.vocab_size, hf.eos_id, hf.pad_id, hf.stop_ids) == (4014, 4000, 4000, (4000, 4007, 4009))
    for text in MIXED_TEXTS:
        assert hf.encode(text) == glm4.encode(text), text


# --- loading ----------------------------------------------------------------------------------------------------


def test_a_missing_file_names_it_and_says_nothing_is_downloaded(tmp_path):
    for release, wanted in [("chatglm3", "tokenizer.model"), ("glm4", "tokenizer.model"), ("hf", "tokenizer.json")]:
        with pytest.raises(TokenizerError, match=f"no {wanted} at .*never downloads"):
            load_chat_tokenizer(tmp_path, release)


def test_an_unknown_release_lists_the_known_ones():
    with pytest.raises(InputError, match="chatglm3"):
        load_chat_tokenizer(TINY_GLM4_TOKENIZER, "glm5")


def test_the_wrong_kind_of_tokenizer_model_is_a_tokenizer_error(tmp_path):
    with pytest.raises(TokenizerError, match="SentencePiece"):
        load_chat_tokenizer(TINY_GLM4_TOKENIZER, "chatglm3")
    shutil.copy(TINY_SENTENCEPIECE_MODEL, tmp_path / "tokenizer.model")
    with pytest.raises(TokenizerError, match="chatglm3"):
        load_chat_tokenizer(tmp_path, "glm4")


def test_the_release_is_told_from_the_folder_files(tmp_path):
    assert (detect_release(TINY_GLM4_TOKENIZER), detect_release(TINY_GLM4_HF_TOKENIZER)) == ("glm4", "hf")
    with pytest.raises(TokenizerError, match=r"neither tokenizer\.model nor tokenizer\.json"):
        detect_release(tmp_path)
    shutil.copy(TINY_SENTENCEPIECE_MODEL, tmp_path / "tokenizer.model")
    with pytest.raises(TokenizerError, match="cannot be told apart"):
        detect_release(tmp_path)
    code = tmp_path / "tokenization_chatglm.py"
    code.write_text('SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]\n')
    assert detect_release(tmp_path) == "chatglm2"
    code.write_text('ROLES = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]\n')
    assert detect_release(tmp_path) == "chatglm3"


def test_assets_are_small():
    for folder in (TINY_GLM4_TOKENIZER, TINY_GLM4_HF_TOKENIZER):
        assert all(path.stat().st_size < 1 << 20 for path in Path(folder).iterdir())
