"""ChatGLM-6B's tokenizer, chat prompt, reply clean-up, batched generation and ``glm-engine chat``."""

import json
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors import safe_open
from typer.testing import CliRunner

import glm_engine
from glm_engine.cli.main import app
from glm_engine.errors import InputError, TokenizerError
from glm_engine.generation.chat import ChatOptions
from glm_engine.generation.strategies import GreedyStrategy
from glm_engine.model.chatglm.chat import build_chat_prompt, generate_ids, process_response
from glm_engine.model.chatglm.config import chatglm_preset
from glm_engine.ops.interface import Op
from glm_engine.ops.torch_ops import TorchOps
from glm_engine.tokenizer import BUILTIN_TOKENIZER_PATH
from glm_engine.tokenizer.chatglm import ChatGLMTokenizer, preprocess

GOLDEN = Path(__file__).parent / "golden" / "chatglm6b_tiny.safetensors"
TINY = chatglm_preset("chatglm-tiny")


@pytest.fixture(scope="module")
def tokenizer():
    return ChatGLMTokenizer(BUILTIN_TOKENIZER_PATH, TINY)


@pytest.fixture(scope="module")
def engine():
    return glm_engine.load_chatglm("chatglm-tiny", dtype="fp32")


def test_preprocessing_turns_whitespace_into_chatglms_pieces():
    assert preprocess("a\nb\tc  d   e") == "a<n>b<|tab|>c<|blank_2|>d<|blank_3|>e"
    assert preprocess(" " * 81) == "<|blank_80|> "  # runs longer than 80 are split, longest first
    assert preprocess("one space") == "one space"


def test_encoding_and_decoding_equal_the_reference_tokenizer(tokenizer):
    """Cases recorded from tokenization_chatglm.py over the same SentencePiece model (make_chatglm_golden.py)."""
    with safe_open(str(GOLDEN), framework="pt") as handle:
        metadata = handle.metadata()
    cases = json.loads(metadata["tokenizer_cases"])
    reference_ids = json.loads(metadata["tokenizer_special_ids"])  # the reference gave the specials new ids here
    ours_to_reference = {tokenizer.special_ids[name]: value for name, value in reference_ids.items()}
    assert len(cases) >= 10
    for case in cases:
        ids = tokenizer.encode(case["text"])
        assert [ours_to_reference.get(i, i) for i in ids] == case["ids"], case["text"]
        specials = set(ours_to_reference)
        if not specials & set(ids):  # the reference renders its added specials as text; ours are control pieces
            assert tokenizer.decode(ids) == case["decoded"], case["text"]


def test_model_inputs_end_with_gmask_and_sop(tokenizer):
    ids = tokenizer.build_inputs("你好")
    assert ids[-2:] == [TINY.gmask_token_id, TINY.bos_token_id]
    assert ids[:-2] == [p for p in spm.SentencePieceProcessor(model_file=str(BUILTIN_TOKENIZER_PATH)).encode("你好")]


def test_decoding_drops_pads_and_specials_and_cleans_up_spaces(tokenizer):
    ids = [TINY.pad_token_id, *tokenizer.encode("Hello world !"), TINY.eos_token_id, TINY.gmask_token_id]
    assert tokenizer.decode(ids) == "Hello world!"


def test_a_tokenizer_from_another_revision_is_refused():
    with pytest.raises(TokenizerError, match="holds <pad> at id 3 but the model config says 7"):
        ChatGLMTokenizer(BUILTIN_TOKENIZER_PATH, TINY.with_overrides(pad_token_id=7))


def test_chat_prompt_has_the_reference_round_format():
    assert build_chat_prompt("你好") == "你好"  # the first round is the bare query
    history = [("你好", "你好👋！"), ("介绍一下清华大学", "清华大学是...")]
    assert build_chat_prompt("它创建于哪一年", history) == (
        "[Round 0]\n问：你好\n答：你好👋！\n"
        "[Round 1]\n问：介绍一下清华大学\n答：清华大学是...\n"
        "[Round 2]\n问：它创建于哪一年\n答："
    )


@pytest.mark.parametrize(
    ("raw", "processed"),
    [
        ("  创建于[[训练时间]]。 ", "创建于2023年。"),
        ("你好,世界!再见:明天;好吗?", "你好，世界！再见：明天；好吗？"),
        ("Hello, world! a: b; c?", "Hello, world! a: b; c?"),  # no CJK neighbour: unchanged
        ("数字1,2", "数字1,2"),
    ],
)
def test_replies_are_cleaned_up_as_process_response_does(raw, processed):
    assert process_response(raw) == processed


def test_chat_keeps_history_and_streams_the_reply(engine):
    streamed = []
    reply, history = engine.chat("你好", do_sample=False, max_length=24, on_text=streamed.append)
    assert history == [("你好", reply)] and reply and streamed[-1] == reply
    again, history = engine.chat("再见", history, max_new_tokens=5, seed=5)
    assert len(history) == 2 and history[1] == ("再见", again)


def test_a_conversation_longer_than_max_length_is_refused(engine):
    with pytest.raises(InputError, match="clear the chat history"):
        engine.chat("你好", max_length=3)


def test_chat_options_are_checked():
    with pytest.raises(InputError, match="temperature"):
        ChatOptions(temperature=0)
    with pytest.raises(InputError, match="unknown chat options"):
        glm_engine.load_chatglm("chatglm-tiny").chat("hi", num_beams=4)


def test_rows_of_a_batch_generate_what_they_generate_alone(engine):
    prompts = [engine.tokenizer.build_inputs("你好"), engine.tokenizer.build_inputs("Hello, how are you today?")]
    config = engine.config
    alone = [generate_ids(engine.runner, config, [p], len(p) + 8, GreedyStrategy())[0] for p in prompts]
    together = generate_ids(engine.runner, config, prompts, max(map(len, prompts)) + 8, GreedyStrategy())
    assert together[0][: len(alone[0])] == alone[0] and together[1] == alone[1]


def test_gelu_op_is_chatglms_tanh_formula_and_every_backend_declares_it():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    expected = 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))
    assert torch.allclose(TorchOps(torch.device("cpu"), torch.float64).gelu(x), expected, rtol=1e-12, atol=1e-15)
    assert glm_engine.backends.registry.get_backend("cpu").supports(Op.GELU, torch.float16)


runner = CliRunner()


def test_cli_chat_reads_stdin_clears_and_saves_history(tmp_path):
    history_file = tmp_path / "history.json"
    result = runner.invoke(
        app,
        ["chat", "--checkpoint", "chatglm-tiny", "--max-new-tokens", "6", "--history-file", str(history_file)],
        input="你好\nclear\nHello\n\nSecond round\nstop\nnever read\n",
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("欢迎使用 ChatGLM-6B 模型") == 2  # at start and after clear
    assert result.output.count("ChatGLM-6B：") == 3  # three queries; the empty line is skipped
    saved = json.loads(history_file.read_text(encoding="utf-8"))
    assert [m["content"] for m in saved if m["role"] == "user"] == ["Hello", "Second round"]  # "clear" forgot one
    assert [m["role"] for m in saved] == ["user", "assistant"] * 2


def test_cli_chat_continues_a_saved_history_and_reports_bad_files(tmp_path):
    path = tmp_path / "history.json"
    history_file = str(path)
    path.write_text(json.dumps([["你好", "你好👋！"]]), encoding="utf-8")
    result = runner.invoke(
        app,
        ["chat", "--checkpoint", "chatglm-tiny", "--greedy", "--max-new-tokens", "4", "--history-file", history_file],
        input="再见\n",
    )
    assert result.exit_code == 0, result.output
    saved = json.loads(path.read_text(encoding="utf-8"))  # the earlier [query, response] form, read and rewritten
    assert [m["content"] for m in saved if m["role"] == "user"] == ["你好", "再见"]
    path.write_text('{"not": "a list"}', encoding="utf-8")
    bad = runner.invoke(app, ["chat", "--checkpoint", "chatglm-tiny", "--history-file", history_file], input="")
    assert bad.exit_code == 1 and "error: --history-file" in bad.output and "Traceback" not in bad.output
    missing = str(tmp_path / "no-such-folder" / "h.json")
    bad = runner.invoke(app, ["chat", "--checkpoint", "chatglm-tiny", "--history-file", missing], input="hi\n")
    assert bad.exit_code == 1 and "its folder" in bad.output and "does not exist" in bad.output
    assert "loading" not in bad.output  # refused before the model is loaded
