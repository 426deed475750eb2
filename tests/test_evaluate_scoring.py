"""Scoring on the demo model: the batched encodings give what independent plain forwards give, at any batch size."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

import glm_engine
from glm_engine.errors import TaskError
from glm_engine.evaluation.config import parse_task_config
from glm_engine.evaluation.datasets import Document, GenerationExample, MultipleChoiceExample
from glm_engine.evaluation.multiple_choice import encode_multiple_choice, predict, score_choices
from glm_engine.evaluation.perplexity import iter_lm_windows, num_windows, perplexity, score_windows
from glm_engine.evaluation.runner import evaluate
from glm_engine.evaluation.tasks import GenerationTask, LanguageModelTask, MultipleChoiceTask, PileTask
from glm_engine.generation.masks import generation_blocked, generation_positions


@pytest.fixture(scope="module")
def engine():
    return glm_engine.load(backend="cpu", dtype="fp32")


def config(**values):
    return parse_task_config({"name": "t", "path": ".", **values})


def separate_choice_log_probs(engine, text, choices, use_task_mask, unidirectional):
    """Each choice in its own forward: context, mask, ``[sop] + choice[:-1]``, with the generation masks and
    positions (or a plain causal mask when unidirectional), summing the log-probs of the choice's tokens."""
    layout = engine.tokenizer.layout
    mask_id = layout.gmask if use_task_mask else layout.mask
    context = text if mask_id in text else [*text, mask_id]
    sums = []
    for choice in choices:
        ids = [*context, layout.sop, *choice[:-1]]
        n = len(ids)
        positions = generation_positions(len(context) + 1, n, context.index(mask_id), use_task_mask)
        if unidirectional:
            blocked = ~torch.ones(n, n, dtype=torch.bool).tril()
        else:
            blocked = generation_blocked(len(context) + 1, n)
        logits = engine.forward(torch.tensor([ids]), positions[None], blocked[None, None])[0]
        log_probs = torch.log_softmax(logits.double(), dim=-1)
        sums.append(sum(float(log_probs[len(context) + t, token]) for t, token in enumerate(choice)))
    return sums


@pytest.mark.parametrize(
    ("use_task_mask", "unidirectional", "with_blank"),
    [(False, False, True), (False, False, False), (True, False, False), (True, True, False)],
)
def test_block_diagonal_choices_score_what_separate_forwards_score(engine, use_task_mask, unidirectional, with_blank):
    tok = engine.tokenizer
    prompt = "A penny saved is a penny [MASK]." if with_blank else "Q: What do you drink when you are thirsty? A:"
    text = tok.tokenize_prompt(prompt)
    choices = [tok.encode(c) for c in ("earned", "a glass of water", "sand")]
    sample = encode_multiple_choice(text, choices, tok.layout, use_task_mask, unidirectional, 512)
    batched = score_choices(engine.forward, [sample], tok.layout.pad)[0]
    expected = separate_choice_log_probs(engine, text, choices, use_task_mask, unidirectional)
    assert batched == pytest.approx(expected, abs=1e-4)
    assert min(expected) < -1.0  # the check compares real log-probs, not zeros


def test_single_token_choices_are_read_from_the_one_sop_row(engine):
    tok = engine.tokenizer
    text = tok.tokenize_prompt("Money is not everything, but there is never enough [MASK].")
    choices = [[251], [199], [247]]
    sample = encode_multiple_choice(text, choices, tok.layout, False, False, 512)
    assert score_choices(engine.forward, [sample], tok.layout.pad)[0] == pytest.approx(
        separate_choice_log_probs(engine, text, choices, False, False), abs=1e-4
    )


def mul_examples(tok):
    rows = [
        ("The early bird catches the [MASK].", ["worm", "train", "moon"], 0),
        ("Honesty is the best [MASK], or so the old saying goes, again and again.", ["policy", "pizza"], 0),
        ("床前明月光，[MASK]。", ["疑是地上霜", "一二三四五"], 0),
        ("Is it day or night?", ["day", "night"], 1),
        ("Love is [MASK].", ["kind"], 0),
    ]
    return [MultipleChoiceExample(tok.tokenize_prompt(t), [tok.encode(c) for c in cs], y) for t, cs, y in rows]


def test_multiple_choice_micro_batches_equal_one_by_one(engine):
    examples = mul_examples(engine.tokenizer)
    one = MultipleChoiceTask(config(type="mul", micro_batch_size=1)).choice_scores(engine, examples)
    three = MultipleChoiceTask(config(type="mul", micro_batch_size=3)).choice_scores(engine, examples)
    for a, b in zip(one, three):
        assert a == pytest.approx(b, abs=1e-4)
    assert [predict(s) for s in one] == [predict(s) for s in three]


def test_prediction_is_the_first_of_equal_best_scores():
    assert predict([-3.0, -1.0, -1.0]) == 1
    assert predict([-2.0]) == 0


@pytest.mark.parametrize("strategy", ["BaseStrategy", "BeamSearchStrategy"])
def test_generation_micro_batches_equal_one_by_one(engine, strategy):
    tok = engine.tokenizer
    prompts = ["The early bird catches the [MASK].", "Where there is a will, there is a", "白日依山尽，", "Time"]
    examples = [GenerationExample(tok.tokenize_prompt(p), [[5]], ["x"]) for p in prompts]
    common = dict(type="gen", sampling_strategy=strategy, num_beams=3, max_gen_length=6)
    one = GenerationTask(config(micro_batch_size=1, **common)).predict(engine, examples, lambda n: None)
    batched = GenerationTask(config(micro_batch_size=4, **common)).predict(engine, examples, lambda n: None)
    assert one == batched
    assert any(one)


def test_greedy_blank_equals_the_generate_api_with_top_k_1(engine):
    tok = engine.tokenizer
    text = "The best way to predict the future is to [MASK]"  # ends with the mask: no eos in either encoding
    tokens = tok.tokenize_prompt(text)
    task = GenerationTask(config(type="gen", max_gen_length=8))
    answer = task.predict(engine, [GenerationExample(tokens, [[5]], ["x"])], lambda n: None)[0]
    completion = engine.generate(text, top_k=1, top_p=0.0, out_seq_length=len(tokens) + 1 + 8)[0]
    assert answer == completion.blanks[0][0]
    assert answer.strip()


def test_lm_task_scores_what_perplexity_scores_at_any_batch_size(engine):
    tok = engine.tokenizer
    text = " ".join(f"You will find a fortune number {i} in the next cookie." for i in range(40))
    doc = Document(tok.encode(text), num_words=len(text.split(" ")), num_bytes=len(text.encode()))
    common = dict(type="lm", use_task_mask=True, generation_length=128)
    one = LanguageModelTask(config(micro_batch_size=1, **common)).predict(engine, [doc], lambda n: None)[0]
    four = LanguageModelTask(config(micro_batch_size=4, **common)).predict(engine, [doc], lambda n: None)[0]
    assert len(doc.tokens) > 2 * 511  # several windows of the 512-token model
    assert four == pytest.approx(one, rel=1e-5)
    reference = perplexity(engine.runner, tok, text, generation_length=128, unit="tokens")
    assert one == pytest.approx(reference.nll, rel=1e-5)
    assert 1.0 < math.exp(one / len(doc.tokens)) < 100.0  # the trained model predicts this text fairly well


def test_unidirectional_lm_scores_every_token_once(engine):
    tokens = engine.tokenizer.encode(" ".join(["The moon waits and the night comes."] * 80))
    layout = engine.tokenizer.layout
    windows = list(iter_lm_windows(tokens, 511, 128, layout.gmask, layout.sop, unidirectional=True))
    calls = []

    def uniform(input_ids, position_ids, blocked):
        calls.append(blocked)
        return torch.zeros(*input_ids.shape, engine.config.vocab_size)

    nll = score_windows(uniform, windows, layout.pad, micro_batch_size=2)
    assert nll == pytest.approx(len(tokens) * math.log(engine.config.vocab_size), rel=1e-6)
    n = calls[0].shape[-1]
    assert torch.equal(calls[0][:, 0], (~torch.ones(n, n, dtype=torch.bool).tril()).expand(2, n, n))


def write_jsonl(path, *items):
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")


@pytest.mark.parametrize(
    ("values", "line", "message"),
    [
        (  # mul: the choices fill max_seq_length
            {"type": "mul", "max_seq_length": 40},
            {"inputs_pretokenized": "Pick one", "choices_pretokenized": ["a very long answer " * 6, "x"], "label": 0},
            r"b\.jsonl:2: the choices take \d+ tokens, which leaves no room",
        ),
        (  # gen: max_gen_length fills the model's context (512 positions), whatever the YAML's max_seq_length
            {"type": "gen", "max_gen_length": 511},
            {"inputs_pretokenized": "Time", "targets_pretokenized": ["x"]},
            r"a\.jsonl:1: max_gen_length 511 leaves no room for the text in max_seq_length 512",
        ),
        (  # gen: a unidirectional task cannot fill a blank
            {"type": "gen", "use_task_mask": True, "unidirectional": True},
            {"inputs_pretokenized": "The early [gMASK] catches the worm", "targets_pretokenized": ["bird"]},
            r"b\.jsonl:2: a unidirectional task continues its text",
        ),
    ],
)
def test_examples_that_do_not_fit_fail_before_any_file_is_scored(engine, tmp_path, values, line, message):
    fine = (
        {"inputs_pretokenized": "The early bird catches the", "choices_pretokenized": ["worm", "cat"], "label": 0}
        if values["type"] == "mul"
        else {"inputs_pretokenized": "The early bird catches the", "targets_pretokenized": ["worm"]}
    )
    write_jsonl(tmp_path / "a.jsonl", fine if "max_gen_length" not in values else line)
    write_jsonl(tmp_path / "b.jsonl", fine, line)
    task = parse_task_config({"name": "t", "path": str(tmp_path), "file_pattern": "*.jsonl", **values})
    scored = []
    with pytest.raises(TaskError, match=message):
        evaluate(engine, [task], progress=lambda label, done, total: scored.append(label))
    assert scored == []


def test_an_lm_window_too_short_for_generation_length_fails_before_scoring(engine, tmp_path):
    (tmp_path / "a.txt").write_text("All programmers are optimists.", encoding="utf-8")
    # 1024 < 2047 passes the YAML check, but the demo model's context makes the window 511
    task = parse_task_config(
        {"name": "t", "type": "lm", "path": str(tmp_path), "file_pattern": "*.txt", "generation_length": 1024}
    )
    scored = []
    with pytest.raises(TaskError, match=r"generation_length 1024 must be below the window of 511 text tokens"):
        evaluate(engine, [task], progress=lambda label, done, total: scored.append(label))
    assert scored == []


def test_lm_micro_batches_span_documents_and_sum_per_document(engine):
    tok = engine.tokenizer
    texts = [f"Fortune {i}: you will meet a tall dark stranger." * (1 + 5 * (i % 3)) for i in range(7)]
    docs = [Document(tok.encode(t), num_words=1, num_bytes=1, subset="s") for t in texts]
    common = dict(type="lm", use_task_mask=True, max_seq_length=64, generation_length=16)

    def run(micro_batch_size):
        calls, finished = [], []

        def forward(ids, positions, blocked):
            calls.append(ids.shape[0])
            return engine.forward(ids, positions, blocked)

        counting = SimpleNamespace(tokenizer=tok, config=engine.config, forward=forward, family=engine.family)
        nlls = PileTask(config(micro_batch_size=micro_batch_size, **common)).predict(counting, docs, finished.append)
        return nlls, calls, finished

    one, one_calls, one_finished = run(1)
    eight, eight_calls, eight_finished = run(8)
    windows = [num_windows(len(d.tokens), 63, 16) for d in docs]
    assert windows == [len(list(iter_lm_windows(d.tokens, 63, 16, 0, 1))) for d in docs] and max(windows) > 1
    per_document = sum(math.ceil(w / 8) for w in windows)  # forwards if batches stopped at each document's end
    assert len(one_calls) == sum(windows) and len(eight_calls) == math.ceil(sum(windows) / 8) < per_document
    assert eight == pytest.approx(one, rel=1e-5)
    assert sum(one_finished) == sum(eight_finished) == len(docs)  # progress counts finished documents
    assert PileTask(config(**common)).weights(engine, docs) == windows  # the reference weights files by windows
    # each document's sum is its own windows' NLL
    alone = PileTask(config(micro_batch_size=1, **common)).predict(engine, docs[2:3], lambda n: None)
    assert one[2] == pytest.approx(alone[0], rel=1e-5)


def reference_window_nll(engine, raw, k, window, generation_length):
    """One window as the reference's LanguageModelTaskDataset builds it, run through one plain forward: tokens
    ``raw[k*G : k*G + window]``, prompt and text split, input ``prompt + [gMASK, sop] + text[:-1]``, targets
    ``prompt + [gMASK] + text``, prompt and mask bidirectional, the rest causal, loss on the text only."""
    layout = engine.tokenizer.layout
    tokens = raw[k * generation_length : k * generation_length + window]
    split = 0 if k == 0 else window - generation_length
    prompt, text = tokens[:split], tokens[split:]
    ids = prompt + [layout.gmask, layout.sop] + text[:-1]
    targets = prompt + [layout.gmask] + text
    n = len(ids)
    allowed = torch.ones(n, n).tril()
    allowed[: len(prompt) + 1, : len(prompt) + 1] = 1
    logits = engine.forward(torch.tensor([ids]), torch.arange(n).unsqueeze(0), (allowed < 0.5).view(1, 1, n, n))[
        0
    ].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    scored = range(len(prompt) + 1, n)
    return -sum(float(log_probs[i, targets[i]]) for i in scored)


def test_lm_task_equals_windows_built_by_hand_from_the_reference_formula(engine):
    tok = engine.tokenizer
    raw = tok.encode(" ".join(f"Line {i} of a fortune that goes on." for i in range(12)))[:80]
    window, generation_length = 63, 24  # max_seq_length 64
    assert window < len(raw) <= window + generation_length  # exactly two windows
    expected = sum(reference_window_nll(engine, raw, k, window, generation_length) for k in (0, 1))
    task = LanguageModelTask(config(type="lm", use_task_mask=True, max_seq_length=64, generation_length=24))
    (nll,) = task.predict(engine, [Document(raw, num_words=1, num_bytes=1)], lambda n: None)
    assert nll == pytest.approx(expected, rel=1e-5)
