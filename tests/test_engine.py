"""The Python API: load, generate (blank filling), forward."""

import pytest
import torch

import glm_engine
from glm_engine.backends.registry import REGISTRY
from glm_engine.errors import InputError
from glm_engine.ops.interface import EagerStepper


@pytest.fixture(scope="module")
def engine():
    """The tiny preset with random weights: the generation machinery, independent of any trained model."""
    return glm_engine.load("glm-tiny")


def test_a_preset_loads_on_the_auto_backend_and_says_its_weights_are_random(engine):
    assert engine.backend.name == REGISTRY.auto()[0].name
    assert engine.config == glm_engine.preset("glm-tiny")
    assert any("random weights" in note for note in engine.notes)


def test_seeded_generation_is_reproducible(engine):
    first = engine.generate("The sky is [MASK] today", out_seq_length=30, seed=11)
    again = engine.generate("The sky is [MASK] today", out_seq_length=30, seed=11)
    other = engine.generate("The sky is [MASK] today", out_seq_length=30, seed=12)
    assert first[0].token_ids == again[0].token_ids
    assert first[0].token_ids != other[0].token_ids


def test_blank_filling_replaces_each_mask_and_keeps_the_text_around_it(engine):
    layout = engine.tokenizer.layout
    result = engine.generate("Alpha [MASK] beta [MASK] gamma", out_seq_length=40, top_k=1, top_p=0.0)[0]
    ids = result.token_ids[0]
    assert layout.mask not in ids and layout.sop not in ids and ids[-1] != layout.eos
    assert len(result.blanks[0]) == 2 and all(result.blanks[0])
    assert result.answers[0].startswith("Alpha") and result.answers[0].endswith("gamma")


def test_gmask_is_appended_and_the_answer_continues_the_prompt(engine):
    result = engine.generate("Once upon a time", out_seq_length=20, top_k=1, top_p=0.0)[0]
    assert result.prompt == "Once upon a time [gMASK]"
    assert result.answers[0].startswith("Once upon a time")
    assert len(result.token_ids[0]) <= 20


def test_batched_prompts_give_the_same_greedy_answers_as_single_prompts(engine):
    prompts = ["Alpha [MASK] beta", "天空是[MASK]色的", "Once upon a time"]
    together = engine.generate(prompts, out_seq_length=24, top_k=1, top_p=0.0)
    for prompt, result in zip(prompts, together):
        assert engine.generate(prompt, out_seq_length=24, top_k=1, top_p=0.0)[0].answers == result.answers


def test_beam_search_returns_num_beams_answers(engine):
    result = engine.generate(
        "The sky is [MASK].", sampling_strategy="BeamSearchStrategy", num_beams=3, out_seq_length=24, deterministic=True
    )[0]
    assert len(result.answers) == 3 and len(result.blank_spans) == 3 and len(result.token_ids) == 3


def test_token_callback_streams_every_step(engine):
    seen = []
    result = engine.generate(
        "Stream [MASK]",
        out_seq_length=16,
        top_k=1,
        top_p=0.0,
        on_token=lambda step, tokens, parents: seen.append((step, tokens[0][0])),
    )
    assert [step for step, _ in seen] == list(range(len(seen)))
    streamed = [t for _, t in seen if t not in engine.tokenizer.layout.end_tokens]
    assert streamed and engine.tokenizer.decode(streamed) == result[0].blanks[0][0]


def test_forward_matches_the_reference_shapes_and_validates_them(engine):
    ids = torch.tensor([[20100, 20200, 20300]])
    positions = torch.arange(3).unsqueeze(0)
    blocked = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    assert engine.forward(ids, positions, blocked).shape == (1, 3, engine.config.vocab_size)
    with pytest.raises(InputError, match="attention_mask must be bool"):
        engine.forward(ids, positions, blocked.float())
    with pytest.raises(InputError, match="position ids"):
        engine.forward(ids, positions + 5000, blocked)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"out_seq_length": 4096}, "exceeds the model's maximum"),
        ({"out_seq_length": 3}, "is shorter"),
        ({"sampling_strategy": "Greedy"}, "sampling strategy must be one of"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"frobnicate": 1}, "unknown generation options"),
    ],
)
def test_bad_generation_requests_are_clear_errors(engine, options, message):
    with pytest.raises(InputError, match=message):
        engine.generate("Hello [MASK] there", **options)


def test_too_long_prompt_is_refused(engine):
    with pytest.raises(InputError, match="text too long"):
        engine.generate("word " * 3000)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision_engines_generate(dtype):
    engine = glm_engine.load("glm-tiny", dtype=dtype)
    assert engine.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert engine.generate("Hello [MASK]", out_seq_length=12, top_k=1)[0].answers[0].startswith("Hello")


def test_random_weights_for_a_huge_preset_are_refused():
    with pytest.raises(InputError, match="pass a checkpoint"):
        glm_engine.load("glm-130b")


class RecordingRunner:
    """Wraps a runner and keeps the position ids of every prefill (the calls with more than one new token)."""

    def __init__(self, runner):
        self.runner, self.prefill_positions = runner, []
        self.config, self.device, self.dtype = runner.config, runner.device, runner.dtype

    def new_cache(self, batch_size, max_length):
        return self.runner.new_cache(batch_size, max_length)

    def forward(self, input_ids, position_ids, blocked, cache=None, last_only=False):
        if input_ids.shape[1] > 1:
            self.prefill_positions.append(position_ids[0].tolist())
        return self.runner.forward(input_ids, position_ids, blocked, cache, last_only)

    def decode_stepper(self, steps=None, requested=None):
        return EagerStepper(self, "steps go through the recorder's forward")


@pytest.mark.parametrize("mask", ["[MASK]", "[sMASK]"])
def test_each_blank_round_puts_sop_at_the_position_of_its_mask_in_the_filled_text(engine, mask):
    recorder = RecordingRunner(engine.runner)
    spy = glm_engine.Engine(recorder, engine.tokenizer, engine.backend, engine.source, [], engine.banned_tokens)
    result = spy.generate(f"Alpha {mask} beta {mask} gamma", out_seq_length=40, top_k=1, top_p=0.0)[0]
    (first, _), (second, _) = result.blank_spans[0]
    assert len(recorder.prefill_positions) == 2
    # the last prefill column is sop: at the mask's index in the sequence of that round
    assert recorder.prefill_positions[0][-1] == first
    assert recorder.prefill_positions[1][-1] == second  # after blank 1 was filled in
    assert recorder.prefill_positions[1][:-1] == list(range(len(recorder.prefill_positions[1]) - 1))


def test_one_generator_across_calls_continues_a_single_random_stream(engine):
    generator = torch.Generator().manual_seed(5)
    first = engine.generate("The sky is [MASK] today", out_seq_length=30, generator=generator)[0]
    second = engine.generate("The sky is [MASK] today", out_seq_length=30, generator=generator)[0]
    assert first.token_ids != second.token_ids  # an interactive session does not replay the same draws
    replay = engine.generate("The sky is [MASK] today", out_seq_length=30, generator=torch.Generator().manual_seed(5))
    assert replay[0].token_ids == first.token_ids
