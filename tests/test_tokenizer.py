"""Tests for the icetk-compatible tokenizer, run on the packaged small test model."""

from __future__ import annotations

from pathlib import Path

import pytest

from glm_engine.errors import InputError, TokenizerError
from glm_engine.model.glm130b.vocab import VocabLayout
from glm_engine.tokenizer import (
    BUILTIN_TOKENIZER_PATH,
    ICETK_CACHE_DIR,
    GLMTokenizer,
    builtin_tokenizer,
    find_tokenizer_model,
    load_tokenizer,
)

# A layout unlike GLM-130B's: text at 100.., specials at 9000.., so ids visibly come from the layout.
SMALL_LAYOUT = VocabLayout(
    text_offset=100,
    mask=9000,
    gmask=9001,
    smask=9002,
    eod=9003,
    sop=9004,
    eop=9005,
    enc=9006,
    dblock=9007,
    eos=102,
    pad=0,
)


@pytest.fixture(scope="module")
def tok() -> GLMTokenizer:
    return builtin_tokenizer(VocabLayout())


@pytest.fixture(scope="module")
def small() -> GLMTokenizer:
    return builtin_tokenizer(SMALL_LAYOUT)


def sp_ids(tok: GLMTokenizer, text: str) -> list[int]:
    """Raw SentencePiece ids, straight from the library, for comparison."""
    return tok._sp.encode(text)


# --- id mapping --------------------------------------------------------------------------------------------------


def test_builtin_model_is_packaged_and_small():
    assert BUILTIN_TOKENIZER_PATH.is_file()
    assert BUILTIN_TOKENIZER_PATH.name == "ice_text.model"
    assert BUILTIN_TOKENIZER_PATH.stat().st_size < 1_000_000


def test_reserved_pieces_sit_at_icetk_ids(tok):
    assert [tok._sp.id_to_piece(i) for i in range(5)] == ["<unk>", "<s>", "</s>", "<pad>", "<n>"]
    assert [tok.id_to_piece(20000 + i) for i in range(5)] == ["<unk>", "<s>", "[</s>]", "<pad>", "<n>"]
    assert tok.num_text_pieces == 4000


def test_encode_adds_text_offset_to_sentencepiece_ids(tok):
    text = "Hello World! 你好，世界。"
    assert tok.encode(text) == [i + 20000 for i in sp_ids(tok, text)]
    assert all(i in tok.text_id_range for i in tok.encode(text))


def test_eos_is_20002_with_glm130b_layout(tok):
    assert tok.layout.eos == 20002
    assert tok._sp.eos_id() + tok.text_offset == 20002
    assert tok.is_special(20002)
    assert tok.decode([20002]) == "[</s>]"


def test_text_id_range_starts_at_offset_and_covers_all_pieces(tok, small):
    assert tok.text_id_range == range(20000, 24000)
    assert small.text_id_range == range(100, 4100)


def test_ids_come_from_a_non_default_layout(small):
    text = "database connection"
    assert small.encode(text) == [i + 100 for i in sp_ids(small, text)]
    assert small.tokenize_prompt("a [MASK] b [gMASK]")[1:2] == [9000]
    assert small.tokenize_prompt("[sMASK]") == [9002]
    assert small.decode([9004, 9005, 102]) == "[sop][eop][</s>]"
    assert small.is_special(9007) and not small.is_special(150000)
    assert small.decode([150000]) == "<unk:150000>"


def test_specials_are_recognised_at_layout_ids(tok):
    layout = tok.layout
    expected = {
        150000: "[MASK]",
        150001: "[gMASK]",
        150002: "[sMASK]",
        150003: "eod",
        150004: "sop",
        150005: "eop",
        150006: "ENC",
        150007: "dBLOCK",
        20002: "</s>",
    }
    assert tok.special_ids == expected
    assert layout.mask_ids == {"[MASK]": 150000, "[sMASK]": 150002, "[gMASK]": 150001}
    assert all(tok.is_special(i) and not tok.is_text(i) for i in expected)
    assert tok.is_text(20005) and not tok.is_special(20005)


def test_id_to_piece_names_specials_and_unknown_ids(tok):
    assert tok.id_to_piece(150004) == "[sop]"
    assert tok.id_to_piece(20005) == "▁"
    assert tok.id_to_piece(7) == "<unk:7>"
    assert tok.id_to_piece(24000) == "<unk:24000>"


# --- encode / decode ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        'database connection failed: could not open file "%s"',
        "清华大学位于中国的首都北京。",
        "数据库连接失败",
        "GLM 是一个开源的中英双语预训练语言模型。",
    ],
)
def test_encode_decode_round_trips(tok, text):
    ids = tok.encode(text)
    assert ids
    assert 20000 not in ids  # no <unk>
    assert tok.decode(ids) == text


def test_encode_folds_newline_into_space_by_default_like_icetk(tok):
    ids = tok.encode("abc\nhi")
    assert ids == tok.encode("abc hi")
    assert 20004 not in ids
    assert tok.decode(ids) == "abc hi"


def test_encode_without_ignore_linebreak_keeps_newlines_as_n_piece(tok):
    ids = tok.encode("abc\nhi\n你好", ignore_linebreak=False)
    assert ids.count(20004) == 2
    assert tok.decode(ids) == "abc\nhi\n你好"


def test_decode_turns_n_piece_into_newline(tok):
    assert tok.decode(tok.encode("line one<n>line two")) == "line one\nline two"


def test_encode_applies_nfkc_like_icetk(tok):
    # icetk's README encodes "!" and "！" to the same id (20035): full-width punctuation is folded.
    assert tok.encode("你好！") == tok.encode("你好!")
    assert tok.decode(tok.encode("你好！")) == "你好!"


def test_encode_of_empty_or_blank_text_is_empty(tok):
    assert tok.encode("") == []
    assert tok.encode("   ") == []


def test_encode_rejects_non_string(tok):
    with pytest.raises(InputError):
        tok.encode([1, 2, 3])
    with pytest.raises(InputError):
        tok.tokenize_prompt(None)


# --- prompts with masks ------------------------------------------------------------------------------------------


def test_prompt_without_mask_is_plain_encode(tok):
    text = "Tsinghua University is in Beijing"
    assert tok.tokenize_prompt(text) == tok.encode(text)


def test_prompt_segments_are_encoded_separately_around_mask(tok):
    text = "Tsinghua University is in [MASK] the capital of China."
    ids = tok.tokenize_prompt(text)
    expected = tok.encode("Tsinghua University is in ") + [150000] + tok.encode(" the capital of China.")
    assert ids == expected
    assert ids.count(150000) == 1


def test_prompt_segments_differ_from_encoding_the_joined_text(tok):
    # "北京上海" encoded whole has no word boundary before 上海; as a segment after a mask it gets a "▁" prefix.
    ids = tok.tokenize_prompt("北京[MASK]上海")
    after = ids[ids.index(150000) + 1 :]
    assert after == tok.encode("上海")
    assert tok.id_to_piece(after[0]).startswith("▁")
    assert [i for i in ids if i != 150000] != tok.encode("北京上海")


def test_prompt_segment_gets_its_own_dummy_prefix(tok):
    ids = tok.tokenize_prompt("[MASK]北京")
    assert ids == [150000] + tok.encode("北京")
    assert tok.id_to_piece(ids[1]).startswith("▁")


def test_prompt_mask_at_start_and_end(tok):
    assert tok.tokenize_prompt("[gMASK]hello") == [150001] + tok.encode("hello")
    assert tok.tokenize_prompt("hello [gMASK]") == tok.encode("hello ") + [150001]
    assert tok.tokenize_prompt("[MASK]") == [150000]


def test_prompt_with_several_masks_of_each_kind(tok):
    text = "A [MASK] B [sMASK] C [gMASK][MASK] 中文"
    expected = (
        tok.encode("A ")
        + [150000]
        + tok.encode(" B ")
        + [150002]
        + tok.encode(" C ")
        + [150001, 150000]
        + tok.encode(" 中文")
    )
    assert tok.tokenize_prompt(text) == expected


def test_prompt_does_not_append_gmask_or_eos(tok):
    ids = tok.tokenize_prompt("no mask here")
    assert 150001 not in ids and 20002 not in ids


def test_prompt_leaves_unknown_bracket_words_as_text(tok):
    ids = tok.tokenize_prompt("[xMASK] [mask]")
    assert not any(tok.is_special(i) for i in ids)
    assert ids == tok.encode("[xMASK] [mask]")


# --- decode rendering --------------------------------------------------------------------------------------------


def test_decode_renders_specials_in_brackets_like_sat(tok):
    ids = tok.encode("Hello") + [150000] + tok.encode("world") + [150004, 150005]
    assert tok.decode(ids) == "Hello[[MASK]]world[sop][eop]"


def test_decode_splits_text_runs_at_specials(tok):
    # SAT decodes each run on its own, so a run after a special loses its leading dummy-prefix space.
    ids = tok.tokenize_prompt("Hello [gMASK] world")
    assert tok.decode(ids) == "Hello[[gMASK]]world"


def test_decode_renders_non_text_ids_as_placeholders(tok):
    assert tok.decode([5, 0]) == "<unk:5><unk:0>"
    assert tok.decode(tok.encode("abc") + [150100, -1]) == "abc<unk:150100><unk:-1>"
    assert tok.decode([24000]) == "<unk:24000>"


def test_decode_accepts_any_int_like(tok):
    import torch

    ids = tok.encode("北京")
    assert tok.decode(torch.tensor(ids)) == "北京"


def test_decode_of_sentencepiece_unk_is_icetk_marker(tok):
    assert tok.decode([20000]).strip() == "⁇"


# --- loading -----------------------------------------------------------------------------------------------------


def test_load_from_explicit_file(tmp_path):
    target = tmp_path / "my_model.model"
    target.write_bytes(BUILTIN_TOKENIZER_PATH.read_bytes())
    loaded = load_tokenizer(str(target), VocabLayout())
    assert loaded.model_path == target
    assert loaded.encode("北京") == builtin_tokenizer().encode("北京")


def test_load_from_directory_with_ice_text_model(tmp_path):
    (tmp_path / "ice_text.model").write_bytes(BUILTIN_TOKENIZER_PATH.read_bytes())
    loaded = load_tokenizer(tmp_path, SMALL_LAYOUT)
    assert loaded.model_path == tmp_path / "ice_text.model"
    assert loaded.text_offset == 100


def test_load_none_uses_icetk_cache_under_home(tmp_path, monkeypatch):
    cache = tmp_path / ".icetk_models"
    cache.mkdir()
    (cache / "ice_text.model").write_bytes(BUILTIN_TOKENIZER_PATH.read_bytes())
    monkeypatch.setenv("HOME", str(tmp_path))
    loaded = load_tokenizer(None, VocabLayout())
    assert loaded.model_path == cache / "ice_text.model"
    assert ICETK_CACHE_DIR == "~/.icetk_models"


def test_missing_model_in_cache_names_searched_path_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(None, VocabLayout())
    message = str(err.value)
    assert str(tmp_path / ".icetk_models" / "ice_text.model") in message
    assert "--tokenizer PATH" in message
    assert "~/.icetk_models/" in message


def test_missing_explicit_file_names_it(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(TokenizerError, match=r"nope\.model"):
        load_tokenizer(missing, VocabLayout())


def test_directory_without_model_names_expected_file(tmp_path):
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(tmp_path, VocabLayout())
    assert str(tmp_path / "ice_text.model") in str(err.value)


def test_load_never_falls_back_to_builtin_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(None, VocabLayout())
    assert str(BUILTIN_TOKENIZER_PATH) not in str(err.value)


@pytest.mark.parametrize("content", [b"", b"this is not a sentencepiece model", bytes(range(256)) * 4])
def test_corrupt_model_raises_tokenizer_error_with_path(tmp_path, content):
    bad = tmp_path / "ice_text.model"
    bad.write_bytes(content)
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(bad, VocabLayout())
    assert str(bad) in str(err.value)


def test_layout_whose_eos_does_not_match_model_is_rejected():
    with pytest.raises(TokenizerError, match="eos"):
        GLMTokenizer(BUILTIN_TOKENIZER_PATH, VocabLayout(eos=20001))


def test_path_with_tilde_is_expanded(tmp_path, monkeypatch):
    (tmp_path / "ice_text.model").write_bytes(BUILTIN_TOKENIZER_PATH.read_bytes())
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_tokenizer(Path("~"), VocabLayout()).model_path == tmp_path / "ice_text.model"


def test_without_a_path_the_tokenizer_beside_the_checkpoint_comes_first(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "ice_text.model").write_bytes(BUILTIN_TOKENIZER_PATH.read_bytes())
    assert find_tokenizer_model(None, checkpoint) == checkpoint / "ice_text.model"
    with pytest.raises(TokenizerError, match=r"elsewhere/ice_text\.model, .*\.icetk_models/ice_text\.model"):
        find_tokenizer_model(None, tmp_path / "elsewhere")
