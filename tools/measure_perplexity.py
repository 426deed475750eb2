"""Held-out perplexity of a checkpoint, scored as the reference's language-modelling task (word-level PPL).

Default: the built-in demo model on its held-out English fortunes (PPL per word as the reference counts words,
``len(text.strip().split(" "))``) and held-out Tang/Song poems (per character, since Chinese has no whitespace
words), next to a randomly initialised model of the same shape as a floor.
Usage: ``python tools/measure_perplexity.py [--checkpoint DIR] [--dtype bf16]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import glm_engine  # noqa: E402
from glm_engine.backends.registry import op_table_for  # noqa: E402
from glm_engine.engine import DEFAULT_MODEL  # noqa: E402
from glm_engine.evaluation.perplexity import perplexity  # noqa: E402
from glm_engine.model.glm130b.weights import random_state_dict  # noqa: E402
from glm_engine.model.graph import DecoderModel  # noqa: E402

HELDOUT = {
    "en": (REPO_ROOT / "tests" / "data" / "demo_heldout_en.txt", "words"),
    "zh": (REPO_ROOT / "tests" / "data" / "demo_heldout_zh.txt", "chars"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=DEFAULT_MODEL)
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--generation-length", type=int, default=None, help="default: min(256, context / 2)")
    args = parser.parse_args()
    engine = glm_engine.load(args.checkpoint, backend=args.backend, dtype=args.dtype)
    config = engine.config
    ops = op_table_for(engine.backend, engine.dtype)
    random_model = DecoderModel.from_state_dict(config, random_state_dict(config, seed=0), ops)
    print(f"{engine.source}: {config.num_parameters() / 1e6:.2f}M parameters, {args.backend} {args.dtype}\n")
    print("| held-out text | unit | units | tokens | PPL | token PPL | random-init PPL | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for path, unit in HELDOUT.values():
        text = path.read_text(encoding="utf-8")
        started = time.perf_counter()
        trained = perplexity(engine.runner, engine.tokenizer, text, args.generation_length, unit)
        seconds = time.perf_counter() - started
        floor = perplexity(random_model, engine.tokenizer, text, args.generation_length, unit)
        print(
            f"| {path.name} | {unit} | {trained.num_units} | {trained.num_tokens} | {trained.ppl:.2f} | "
            f"{trained.token_ppl:.2f} | {floor.ppl:.3g} | {seconds:.1f} |"
        )


if __name__ == "__main__":
    main()
