"""Generate golden tensors for glm-engine's ChatGLM-6B graph from the public reference modeling code.

The reference is ``modeling_chatglm.py`` + ``configuration_chatglm.py`` of the Hugging Face repository
``THUDM/chatglm-6b`` (final revision ``8b7d335``). This script does not contain or copy that code: it takes the
folder holding the two files as an argument, imports them as a package, builds a tiny random model with them and
drives it through ``transformers``' own ``generate``. It writes ``tests/golden/chatglm6b_tiny.safetensors``.

Setup (a separate venv outside the repo; never install these into the project's .venv)::

    python3 -m venv /work/chatglmenv
    /work/chatglmenv/bin/pip install torch==2.13.0 transformers==4.30.2 sentencepiece safetensors

    (the reference code needs transformers 4.27-4.33: it imports ``transformers.generation.utils`` names that
    later releases moved; torch pinned exactly, an unpinned torch pulls a multi-GB CUDA build.)

Run from the repository root::

    /work/chatglmenv/bin/python tools/golden/make_chatglm_golden.py --reference DIR          # writes the file
    /work/chatglmenv/bin/python tools/golden/make_chatglm_golden.py --reference DIR --check  # compares instead

What is generated
-----------------
* Model: ``ChatGLMForConditionalGeneration`` with 3 layers, hidden 64, 4 heads (head dim 16, so two rotary halves of
  8), MLP 160, vocab 128, max sequence 64, and a small id layout: [MASK] 120, [gMASK] 121, <sop> 124, <eop> 125,
  </s> 2, <pad> 3. Seeded random weights (scales below), stored fp16 under the Hugging Face key names, with the
  ``rotary_emb.inv_freq`` buffers a real checkpoint carries.
* Cases (batch 1), each a prompt of ids as the reference's tokenizers build them:
    - ``gmask``: 9 text ids, [gMASK], <sop> (the final tokenizer's ``build_inputs_with_special_tokens``, and what
      ``chat()`` feeds);
    - ``mask``: 4 text ids, [MASK], 4 text ids, </s>, <sop> (the pre-2023-04-14 tokenizer's layout for a prompt
      with [MASK]: no [gMASK], so the model takes the [MASK] position);
    - ``mask_gmask``: 4 text ids, [MASK], 4 text ids, [gMASK], <sop> (the final tokenizer on a prompt with [MASK]:
      the model prefers [gMASK]).
* For fp32 (``.float()``, the reference's CPU recipe) and fp16 (``.half()``): ``model.generate(do_sample=False,
  max_new_tokens=16, output_scores=True)``. Forward pre-hooks record the position ids and attention mask the
  reference itself built (``prepare_inputs_for_generation`` / ``get_position_ids`` / ``get_masks`` /
  ``_update_model_kwargs_for_generation``); a forward hook records the prefill logits of every position.
  ``step_logits[k]`` are the logits greedy step k chose from (k = 0: the prefill's last position).
* The rotary tables of layer 0 as the reference cached them (``rotary.<dtype>.cos|sin``).
* Tokenizer cases (metadata ``tokenizer_cases``): ``tokenization_chatglm.py``'s ``ChatGLMTokenizer`` over the
  packaged 4000-piece test SentencePiece model, set up as ``from_pretrained`` does (``sanitize_special_tokens``,
  which here gives the special strings new ids, recorded in ``tokenizer_special_ids``): ids of texts with
  linebreaks, tabs, blank runs and special-token strings, and ``decode`` of those ids.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
import types
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT_PATH = REPO_ROOT / "tests" / "golden" / "chatglm6b_tiny.safetensors"
GENERATOR = "tools/golden/make_chatglm_golden.py"
REFERENCE_REVISION = "THUDM/chatglm-6b 8b7d335 (Hugging Face, 2023-09-04)"
PACKAGE = "chatglm_reference"

CONFIG = {
    "num_layers": 3,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "inner_hidden_size": 160,
    "vocab_size": 128,
    "max_sequence_length": 64,
    "layernorm_epsilon": 1e-5,
    "bos_token_id": 124,
    "eos_token_id": 125,
    "mask_token_id": 120,
    "gmask_token_id": 121,
    "pad_token_id": 3,
    "position_encoding_2d": True,
    "quantization_bit": 0,
}
END_OF_TEXT_ID = 2  # "</s>", SentencePiece's eos piece, which the older tokenizer appended after a [MASK] prompt
TEXT_IDS = (5, 120)  # text ids are drawn from this range (below the specials, above <unk> <s> </s> <pad> <n>)
N_GEN = 16
# Weight scales: embedding N(0, 1); linears N(0, (GAIN^2)/fan_in); LayerNorm gains 1 +- 0.2, biases N(0, 0.1^2).
# Seed and gain were picked by trying seeds 0..39 at gains {1.0, 1.5}, requiring in all six dtype/case runs 16 greedy
# tokens (no early <eop>), >= 8 distinct ones and a top-1/top-2 margin >= 0.02 at every step. Four passed (gain 1.0:
# seed 24; gain 1.5: seeds 18, 19, 21); 21 has the largest smallest margin (0.053).
SEED = 21
GAIN = 1.5
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
TOKENIZER_MODEL = REPO_ROOT / "glm_engine" / "assets" / "test_tokenizer" / "ice_text.model"
TOKENIZER_TEXTS = (
    "你好",
    "Hello world!",
    "a\nb",
    "line one\n\nline two",
    "  two leading",
    "x    four\tspaces",
    "def f():\n    return 1",
    "trailing   ",
    "[Round 0]\n问：你好\n答：你好👋！\n[Round 1]\n问：介绍一下\n答：",
    "It is , ok . Isn 't it ?",
    "[MASK] in text",
    "x[MASK]y",
    "a  <eop>  b",
    "[gMASK] z",
    "a </s> b",
    "tab\t\tdouble" + " " * 90 + "end",
)


def import_reference(folder: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """Import ``configuration_chatglm`` and ``modeling_chatglm`` from ``folder`` as one package (they import each
    other relatively); ``tokenization_chatglm`` is imported from the same package later."""
    for name in ("modeling_chatglm.py", "configuration_chatglm.py", "tokenization_chatglm.py"):
        if not (folder / name).is_file():
            sys.exit(f"{folder} has no {name}; pass the folder of THUDM/chatglm-6b's reference code")
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(folder)]
    sys.modules[PACKAGE] = package
    return (
        importlib.import_module(f"{PACKAGE}.configuration_chatglm"),
        importlib.import_module(f"{PACKAGE}.modeling_chatglm"),
    )


def random_weights(names_and_shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(SEED)
    out = {}
    for key, shape in names_and_shapes.items():
        if key.endswith("inv_freq"):
            continue
        noise = torch.randn(shape, generator=gen)
        if key.endswith("layernorm.weight"):
            tensor = 1.0 + 0.2 * noise
        elif key.endswith("bias"):
            tensor = 0.1 * noise
        elif key == "transformer.word_embeddings.weight":
            tensor = noise
        else:
            tensor = GAIN * noise / shape[1] ** 0.5
        out[key] = tensor.half()
    return out


def make_cases() -> dict[str, list[int]]:
    gen = torch.Generator().manual_seed(SEED + 1)

    def text(n: int) -> list[int]:
        return torch.randint(*TEXT_IDS, (n,), generator=gen).tolist()

    c = CONFIG
    return {
        "gmask": text(9) + [c["gmask_token_id"], c["bos_token_id"]],
        "mask": text(4) + [c["mask_token_id"]] + text(4) + [END_OF_TEXT_ID, c["bos_token_id"]],
        "mask_gmask": text(4) + [c["mask_token_id"]] + text(4) + [c["gmask_token_id"], c["bos_token_id"]],
    }


def run_case(model: torch.nn.Module, ids: list[int]) -> dict[str, torch.Tensor]:
    """Greedy ``generate`` with the reference's own inputs recorded."""
    calls: list[dict[str, torch.Tensor | None]] = []
    outputs: list[torch.Tensor] = []

    def record_inputs(_module, _args, kwargs):
        calls.append({k: kwargs.get(k) for k in ("input_ids", "position_ids", "attention_mask")})

    def record_logits(_module, _args, _kwargs, output):
        outputs.append(output.logits.detach().clone())

    hooks = [
        model.register_forward_pre_hook(record_inputs, with_kwargs=True),
        model.register_forward_hook(record_logits, with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            result = model.generate(
                torch.tensor([ids]),
                do_sample=False,
                num_beams=1,
                max_new_tokens=N_GEN,
                output_scores=True,
                return_dict_in_generate=True,
            )
    finally:
        for hook in hooks:
            hook.remove()
    prefill = calls[0]
    assert prefill["attention_mask"] is not None and prefill["attention_mask"].dtype == torch.bool
    greedy = result.sequences[0, len(ids) :]
    steps = torch.cat(result.scores, dim=0)
    assert torch.equal(steps.argmax(-1), greedy), "greedy tokens are the argmax of the recorded step logits"
    assert all(c["attention_mask"] is None for c in calls[1:]), "decode steps attend to everything before them"
    return {
        "position_ids": prefill["position_ids"].clone(),
        "attention_mask": prefill["attention_mask"].clone(),
        "step_position_ids": torch.cat([c["position_ids"][0, :, 0].unsqueeze(0) for c in calls[1:]]),
        "prefill_logits": outputs[0][0],
        "step_logits": steps,
        "greedy_tokens": greedy.clone(),
    }


def tokenizer_cases() -> tuple[list[dict], dict[str, int]]:
    """The reference tokenizer's ids and decoded text for TOKENIZER_TEXTS, and the ids it gave the specials."""
    module = importlib.import_module(f"{PACKAGE}.tokenization_chatglm")
    tokenizer = module.ChatGLMTokenizer(vocab_file=str(TOKENIZER_MODEL), num_image_tokens=0)
    tokenizer.sanitize_special_tokens()  # what from_pretrained does: the special strings become unsplittable
    cases = []
    for text in TOKENIZER_TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        cases.append({"text": text, "ids": ids, "decoded": tokenizer.decode(ids)})
    specials = {name: tokenizer.convert_tokens_to_ids(name) for name in ("<sop>", "<eop>", "[MASK]", "<pad>")}
    return cases, specials


def quality(run: dict[str, torch.Tensor]) -> tuple[int, int, float]:
    """(generated tokens, distinct ones, smallest top-1/top-2 gap of the step logits)."""
    top2 = run["step_logits"].float().topk(2, dim=-1).values
    return len(run["greedy_tokens"]), len(set(run["greedy_tokens"].tolist())), float((top2[:, 0] - top2[:, 1]).min())


def generate(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    config_module, modeling = import_reference(folder)
    config = config_module.ChatGLMConfig(**CONFIG, use_cache=True)

    def build(weights: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
        """A fresh reference model: its rotary tables are cached at the first forward in the dtype of that moment
        (and later only cast), so each dtype gets its own model, moved before any forward as users do."""
        torch.manual_seed(0)  # the reference's own init is overwritten; seeded so nothing depends on it
        model = modeling.ChatGLMForConditionalGeneration(config, empty_init=False).eval()
        if weights is not None:
            missing, unexpected = model.load_state_dict(weights, strict=False)
            assert not unexpected and all(k.endswith("inv_freq") for k in missing), (missing, unexpected)
        return model

    fresh = build()
    weights = random_weights({k: tuple(v.shape) for k, v in fresh.state_dict().items()})
    tensors = dict(weights)
    tensors.update({k: v.clone() for k, v in fresh.state_dict().items() if k.endswith("inv_freq")})

    cases = make_cases()
    for name, ids in cases.items():
        tensors[f"cases.{name}.input_ids"] = torch.tensor([ids])
    report = []
    for dtype_name, dtype in DTYPES.items():
        model = build(weights).to(dtype)
        for name, ids in cases.items():
            run = run_case(model, ids)
            report.append(f"{dtype_name}/{name}: tokens, distinct, min margin = {quality(run)}")
            for key in ("position_ids", "attention_mask"):
                shared = f"cases.{name}.{key}"
                if shared in tensors:
                    assert torch.equal(tensors[shared], run[key]), f"{shared} differs between dtypes"
                tensors[shared] = run[key]
            for key in ("prefill_logits", "step_logits", "greedy_tokens", "step_position_ids"):
                tensors[f"{dtype_name}.{name}.{key}"] = run[key].contiguous()
        rotary = model.transformer.layers[0].attention.rotary_emb
        tensors[f"rotary.{dtype_name}.cos"] = rotary.cos_cached[:, 0].clone()
        tensors[f"rotary.{dtype_name}.sin"] = rotary.sin_cached[:, 0].clone()
    print("\n".join(report))

    import transformers

    tokenizer_texts, tokenizer_specials = tokenizer_cases()
    metadata = {
        "tokenizer_cases": json.dumps(tokenizer_texts, ensure_ascii=False),
        "tokenizer_special_ids": json.dumps(tokenizer_specials),
        "generator": GENERATOR,
        "reference": REFERENCE_REVISION,
        "modeling_chatglm_sha256": hashlib.sha256((folder / "modeling_chatglm.py").read_bytes()).hexdigest(),
        "config": json.dumps(CONFIG),
        "end_of_text_id": str(END_OF_TEXT_ID),
        "cases": json.dumps(list(cases)),
        "dtypes": json.dumps(list(DTYPES)),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "seed": str(SEED),
    }
    return tensors, metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="folder with modeling_chatglm.py")
    parser.add_argument("--out", type=Path, default=OUT_PATH)
    parser.add_argument("--check", action="store_true", help="compare against the existing file instead of writing")
    options = parser.parse_args()

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors, metadata = generate(options.reference.resolve())
    if options.check:
        stored = load_file(str(options.out))
        with safe_open(str(options.out), framework="pt") as handle:
            stored_metadata = handle.metadata()
        versions = ("torch", "transformers")
        bad = [f"metadata:{k}" for k in metadata if k not in versions and stored_metadata.get(k) != metadata[k]]
        bad += [k for k in set(stored) | set(tensors) if k not in stored or k not in tensors]
        bad += [k for k in set(stored) & set(tensors) if not torch.equal(stored[k], tensors[k])]
        print(f"[check] {len(tensors)} tensors; {len(bad)} differ: {sorted(bad)[:10]}")
        sys.exit(1 if bad else 0)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(options.out), metadata=metadata)
    print(f"wrote {options.out} ({options.out.stat().st_size} bytes, {len(tensors)} tensors)")


if __name__ == "__main__":
    main()
