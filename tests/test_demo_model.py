"""The built-in demo model: it ships small, loads, and really fills blanks on text it never saw."""

import json
from pathlib import Path

import pytest
import torch

import glm_engine
from glm_engine.backends.registry import get_backend, op_table_for
from glm_engine.engine import DEFAULT_MODEL
from glm_engine.evaluation.perplexity import perplexity
from glm_engine.model.glm130b.weights import random_state_dict
from glm_engine.model.graph import DecoderModel

DATA = Path(__file__).parent / "data"
# The size bar for the shipped checkpoint plus tokenizer.
MAX_SHIPPED_BYTES = 8_000_000
# Held-out word-level PPL bar on the English fortunes: the trained model must be below it and a randomly
# initialised model of the same shape above it (both computed below).
PPL_BAR = 50_000.0
# Prompts built from held-out documents (tests/data), which training never saw.
HELDOUT_PROMPTS = [
    "All programmers are [MASK]. Perhaps this modern sorcery especially attracts those who believe in happy endings.",
    "行到东溪看水时，[MASK]。",
    "Anyone who has attended a USENIX conference in a fancy hotel can tell you that",
]


@pytest.fixture(scope="module")
def engine():
    return glm_engine.load(backend="cpu", dtype="fp32")


def test_the_demo_model_is_the_default_and_ships_small():
    folder = Path(DEFAULT_MODEL)
    shipped = [folder / name for name in ("config.json", "ice_text.model", "model.safetensors")]
    assert all(path.is_file() for path in shipped)
    assert sum(path.stat().st_size for path in shipped) < MAX_SHIPPED_BYTES
    with open(folder / "model.safetensors", "rb") as handle:  # stored in half precision
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    assert {entry["dtype"] for name, entry in header.items() if name != "__metadata__"} == {"F16"}


def test_it_loads_with_its_own_tokenizer_and_gives_finite_logits(engine):
    assert engine.source == "the built-in demo model"
    assert engine.tokenizer.model_path.parent == Path(DEFAULT_MODEL)
    ids = torch.tensor([engine.tokenizer.encode("The quick brown fox") + [engine.config.vocab_layout.gmask]])
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    logits = engine.forward(ids, positions, torch.zeros(1, 1, ids.shape[1], ids.shape[1], dtype=torch.bool))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("prompt", HELDOUT_PROMPTS)
def test_greedy_blank_filling_on_heldout_prompts_gives_real_text(engine, prompt):
    result = engine.generate(prompt, out_seq_length=96, top_k=1, top_p=0.0)[0]
    start, end = result.blank_spans[0][0]
    span = result.token_ids[0][start:end]
    assert span, f"empty blank for {prompt!r}"
    assert all(engine.tokenizer.is_text(t) and t != 0 for t in span)  # in-vocabulary text, no <unk>
    assert result.blanks[0][0].strip()


def test_heldout_perplexity_beats_a_random_model_of_the_same_shape(engine):
    text = (DATA / "demo_heldout_en.txt").read_text(encoding="utf-8")[:20000]
    trained = perplexity(engine.runner, engine.tokenizer, text, unit="words")
    config = engine.config
    cpu = get_backend("cpu")
    random_model = DecoderModel.from_state_dict(
        config, random_state_dict(config, seed=0), op_table_for(cpu, torch.float32)
    )
    untrained = perplexity(random_model, engine.tokenizer, text, unit="words")
    assert trained.ppl < PPL_BAR < untrained.ppl
