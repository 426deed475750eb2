"""Evaluation encodings of causal models (ChatGLM2/3, GLM-4): one packed forward per multiple-choice example and the
sliding perplexity windows give what plain causal forwards of ``prefix + text + choice`` give, one sequence at a time
(the way causal-LM harnesses score)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glm_engine.backends.registry import get_backend, op_table_for
from glm_engine.errors import TaskError
from glm_engine.evaluation.causal import encode_causal_choice, iter_causal_windows
from glm_engine.evaluation.multiple_choice import score_choices
from glm_engine.evaluation.perplexity import window_nlls
from glm_engine.model.chatglm2.config import CHATGLM2_PRESETS
from glm_engine.model.chatglm2.family import ChatGLM2Family
from glm_engine.model.graph import DecoderModel

CONFIG = CHATGLM2_PRESETS["chatglm3-tiny"]
PREFIX = [4001, 4003]  # [gMASK] sop of the tiny vocabulary


@pytest.fixture(scope="module")
def model() -> DecoderModel:
    family = ChatGLM2Family()
    state = family.random_state_dict(CONFIG, 3)
    return DecoderModel.from_state_dict(CONFIG, state, op_table_for(get_backend("cpu"), torch.float32))


def forward(model: DecoderModel):
    def run(ids: torch.Tensor, positions: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model.forward(ids, positions, blocked)

    return run


def plain_log_probs(model: DecoderModel, ids: list[int]) -> torch.Tensor:
    """Log-probabilities of each next token of one sequence under the family's own causal layout."""
    tensor = torch.tensor([ids])
    positions, blocked = model.family.prompt_inputs(model.config, tensor)
    with torch.inference_mode():
        return torch.log_softmax(model.forward(tensor, positions, blocked)[0].double(), dim=-1)


def test_packed_choices_score_as_separate_causal_sequences(model):
    text, choices = [50, 51, 52, 53], [[60], [61, 62, 63], [70, 71]]
    sample = encode_causal_choice(PREFIX, text, choices, max_length=64)
    packed = score_choices(forward(model), [sample], pad_id=0)[0]
    for choice, score in zip(choices, packed):
        ids = [*PREFIX, *text, *choice]
        log_probs = plain_log_probs(model, ids)
        first = len(PREFIX) + len(text)
        expected = sum(float(log_probs[first - 1 + k, token]) for k, token in enumerate(choice))
        assert score == pytest.approx(expected, abs=2e-4)


def test_long_text_keeps_its_end_and_choices_that_leave_no_room_are_refused():
    sample = encode_causal_choice(PREFIX, list(range(100, 130)), [[7, 8, 9]], max_length=12)
    assert len(sample.sample.ids) == 12 and sample.sample.ids[:2] == PREFIX and sample.sample.ids[9] == 129
    with pytest.raises(TaskError, match="no room"):
        encode_causal_choice(PREFIX, [1, 2], [[3] * 12], max_length=12)


@pytest.mark.parametrize("prefix", [PREFIX, []])
def test_windows_score_every_token_once_each_as_a_plain_causal_pass(model, prefix):
    tokens = list(range(200, 237))
    windows = list(iter_causal_windows(prefix, tokens, window=16, generation_length=8))
    batched = window_nlls(forward(model), windows, pad_id=0, micro_batch_size=3)
    assert batched == pytest.approx(window_nlls(forward(model), windows, pad_id=0), abs=2e-4)
    scored = [t for w in windows for t in w.targets]
    assert scored == (tokens if prefix else tokens[1:])  # every token once (the first has no context without a prefix)
    assert all(len(w.sample.ids) <= len(prefix) + 15 for w in windows)
    # the first window is a plain causal pass over prefix + its tokens
    first = windows[0]
    log_probs = plain_log_probs(model, first.sample.ids)
    expected = -sum(float(log_probs[first.first_scored + k, t]) for k, t in enumerate(first.targets))
    assert batched[0] == pytest.approx(expected, abs=2e-4)


def test_glm_engine_evaluate_scores_the_demo_mul_and_lm_tasks_on_a_causal_model_and_refuses_generation(tmp_path):
    from typer.testing import CliRunner

    from glm_engine.cli.main import app

    tasks = Path(__file__).resolve().parent.parent / "glm_engine" / "assets" / "eval_tasks"
    runner = CliRunner()
    args = ["evaluate", "--checkpoint", "glm4-tiny", "--backend", "cpu", "--output", "json"]
    result = runner.invoke(app, [*args, "--task", str(tasks / "mul" / "cloze.yaml"), "--task", str(tasks / "lm")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert {task["type"] for task in report["tasks"]} == {"mul", "lm"}
    assert all(file["metrics"] for task in report["tasks"] for file in task["files"])
    refused = runner.invoke(app, [*args, "--task", str(tasks / "gen" / "greedy.yaml")])
    assert refused.exit_code == 1 and "causal" in refused.output and "Traceback" not in refused.output
