"""Accuracy of weight-only quantization: logits NMSE and top-1 agreement against the unquantized model, and
held-out perplexity, for INT8 rowwise, INT4 rowwise and INT4 groupwise.

Two models: the built-in demo model (trained, so its weights have the structure quantization meets in practice) on
its held-out English and Chinese text, and a random-weight GLM with realistic widths (hidden 4096) on random tokens.
Prints markdown tables for the README. Usage: ``python tools/measure_quant_accuracy.py [--dtype fp32]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import glm_engine  # noqa: E402
from glm_engine.backends.registry import get_backend, op_table_for  # noqa: E402
from glm_engine.evaluation.perplexity import perplexity  # noqa: E402
from glm_engine.model.glm130b.config import GLMConfig  # noqa: E402
from glm_engine.model.glm130b.vocab import VocabLayout  # noqa: E402
from glm_engine.model.glm130b.weights import quantize_linears, random_state_dict  # noqa: E402
from glm_engine.model.graph import DecoderModel  # noqa: E402

HELDOUT = {
    "en": (REPO_ROOT / "tests" / "data" / "demo_heldout_en.txt", "words"),
    "zh": (REPO_ROOT / "tests" / "data" / "demo_heldout_zh.txt", "chars"),
}
VARIANTS = {  # name -> (quant, scheme, group size)
    "fp": (None, "rowwise", None),
    "INT8 rowwise": ("int8", "rowwise", None),
    "INT8 groupwise 64": ("int8", "groupwise", 64),
    "INT4 rowwise": ("int4", "rowwise", None),
    "INT4 groupwise 64": ("int4", "groupwise", 64),
    "INT4 groupwise 32": ("int4", "groupwise", 32),
}


def nmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean() / (b.double() ** 2).mean())


def heldout_logits(engine: glm_engine.Engine, text: str, length: int) -> torch.Tensor:
    """Causal logits over the first ``length`` tokens of ``text`` (one window)."""
    ids = torch.tensor([engine.tokenizer.encode(text)[:length]])
    n = ids.shape[1]
    blocked = ~torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    return engine.forward(ids, torch.arange(n)[None], blocked)


def demo_model(dtype: str) -> None:
    print(f"Built-in demo model ({dtype}, cpu): logits over 200 held-out tokens per language, and held-out PPL\n")
    print(
        "| weights | linear bytes | NMSE en | top-1 en | NMSE zh | top-1 zh | PPL en (per word) | PPL zh (per char) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    texts = {lang: path.read_text(encoding="utf-8") for lang, (path, _) in HELDOUT.items()}
    reference = {}
    for name, (quant, scheme, group) in VARIANTS.items():
        engine = glm_engine.load(dtype=dtype, backend="cpu", quant=quant, quant_scheme=scheme, quant_group_size=group)
        linear_bytes = sum(
            getattr(w, "nbytes", 0) or w.numel() * w.element_size()
            for layer in engine.runner.weights.layers
            for w in (
                layer.query_key_value_weight,
                layer.dense_weight,
                layer.dense_h_to_4h_weight,
                layer.dense_4h_to_h_weight,
            )
        )
        row = [name, f"{linear_bytes / 1e6:.2f} MB"]
        logits = {lang: heldout_logits(engine, text, 200) for lang, text in texts.items()}
        if quant is None:
            reference = logits
        for lang in ("en", "zh"):
            agree = (logits[lang].argmax(-1) == reference[lang].argmax(-1)).float().mean()
            row += [f"{nmse(logits[lang], reference[lang]):.1e}", f"{100 * float(agree):.1f}%"]
        for lang, (_, unit) in HELDOUT.items():
            row.append(f"{perplexity(engine.runner, engine.tokenizer, texts[lang], None, unit).ppl:.1f}")
        print("| " + " | ".join(row) + " |")


def wide_random_model(dtype: torch.dtype) -> None:
    specials = dict(mask=16376, gmask=16377, smask=16378, eod=16379, sop=16380, eop=16381, enc=16382, dblock=16383)
    config = GLMConfig(
        num_layers=2,
        hidden_size=4096,
        num_attention_heads=32,
        inner_hidden_size=10880,
        vocab_size=16384,
        max_sequence_length=256,
        vocab_layout=VocabLayout(text_offset=10, eos=12, pad=0, **specials),
    )
    ops = op_table_for(get_backend("cpu"), dtype)
    full = random_state_dict(config, seed=0)
    ids = torch.randint(0, config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(1))
    blocked = ~torch.ones(64, 64, dtype=torch.bool).tril()[None, None]
    print(f"\nRandom-weight GLM, hidden 4096, inner 10880, 2 layers ({dtype}): logits over 64 random tokens\n")
    print("| weights | NMSE | top-1 | seconds |")
    print("|---|---|---|---|")
    reference = None
    for name, (quant, _, group) in VARIANTS.items():
        started = time.perf_counter()
        state = full if quant is None else quantize_linears(full, 8 if quant == "int8" else 4, group)
        model = DecoderModel.from_state_dict(config, state, ops)
        with torch.inference_mode():
            logits = model.forward(ids, torch.arange(64)[None], blocked)
        reference = logits if reference is None else reference
        agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
        print(
            f"| {name} | {nmse(logits, reference):.1e} | {100 * float(agree):.1f}% | "
            f"{time.perf_counter() - started:.1f} |"
        )
        del model, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--skip-wide", action="store_true", help="only the demo model")
    args = parser.parse_args()
    torch.manual_seed(0)
    demo_model(args.dtype)
    if not args.skip_wide:
        wide_random_model(torch.float32 if args.dtype == "fp32" else torch.bfloat16)


if __name__ == "__main__":
    main()
