"""Train the built-in demo model: a small bilingual GLM that fills [MASK] blanks and continues [gMASK] text.

Everything here is reproducible on a fresh 2-core machine in well under an hour:

1. Corpus, from Debian's package archive (``apt-get download`` needs no root and installs nothing):
   * ``fortunes`` (English fortune cookies; BSD licence, see the package's copyright file),
   * ``fortunes-zh`` (Chinese: the 300 Tang poems ``tang300``, 100 Song ci ``song100`` and a collection of Chinese
     sayings and Debian texts ``chinese``; GPL-3.0+ packaging, the classical poems themselves are public domain).
   Each ``%``-separated entry is one document; terminal colour codes are removed. Documents whose hash falls in the
   held-out bucket never reach training; held-out English fortunes and Tang/Song poems are written to
   ``tests/data/`` for the perplexity measurement and tests.
2. Tokenizer: a SentencePiece unigram model (``nmt_nfkc``, 5000 pieces, unk/bos/eos at 0/1/2) with a compact GLM
   layout: text ids are piece ids (offset 0) and the GLM specials sit right after them, so eos is id 2.
3. Model: GLM-130B's architecture at toy size (DeepNorm, GeGLU, 1-D rotary, prefix-bidirectional attention, tied
   output embedding), run through glm-engine's own graph and CPU ops, trained with GLM's blank-infilling
   objective on random 24-224-token windows of the shuffled documents laid end to end (so every position up to the
   256 maximum is trained): half the samples hide ~15% of the tokens in Poisson(3)-long spans behind [MASK] and
   regenerate them after ``sop`` at the mask's position; the other half cut the window, end the (possibly empty)
   prefix with [gMASK] and generate the rest with continuing positions. Inputs follow generation exactly (``eos``
   after text that does not end with a mask). The loss covers the generated part and its ``eop``.
4. Output: ``glm_engine/assets/demo_model/`` (``config.json``, ``model.safetensors`` in fp16, ``ice_text.model``),
   each written to a temporary name and renamed when complete.

Usage: ``python tools/train_demo_model.py [--minutes 38 | --steps N] [--corpus-dir DIR]`` (DIR: where the two
``.deb`` files are downloaded and unpacked; default a temporary folder). A time budget fixes the learning-rate
schedule from the speed measured over the first 20 steps and prints it; ``--steps`` repeats a run exactly. The
shipped model came from ``--minutes 38`` (3,539 steps on a 2-core development machine).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from glm_engine.backends.cpu.ops import CpuOps  # noqa: E402
from glm_engine.checkpoint import save_native  # noqa: E402
from glm_engine.checkpoint.atomic import write_atomically  # noqa: E402
from glm_engine.generation.masks import generation_blocked  # noqa: E402
from glm_engine.model.glm130b.config import GLMConfig  # noqa: E402
from glm_engine.model.glm130b.vocab import VocabLayout  # noqa: E402
from glm_engine.model.glm130b.weights import parameter_shapes  # noqa: E402
from glm_engine.model.graph import DecoderModel  # noqa: E402

OUTPUT_DIR = REPO_ROOT / "glm_engine" / "assets" / "demo_model"
HELDOUT_DIR = REPO_ROOT / "tests" / "data"
PACKAGES = ("fortunes", "fortunes-zh")
FORTUNE_DIR = Path("usr/share/games/fortunes")
CHINESE_FILES = ("tang300", "song100", "chinese")
SKIPPED_FILES = ("art", "ascii-art")  # drawings, not text
HELDOUT_PERCENT = {"en": 3, "poems": 15}  # few poems exist (~400): hold out more of them
SEED = 2026

PIECES = 5000
HIDDEN, LAYERS, HEADS, INNER = 192, 4, 3, 512
MAX_POSITIONS = 256  # the demo's max_sequence_length: training samples fill it, so every position is trained
MIN_SAMPLE_TOKENS, MAX_SAMPLE_TOKENS = 24, 224  # text per sample; its masks, sop and eop keep it within 256
BATCH = 32  # samples per step, packed into rows of 256 tokens
PEAK_LR, WARMUP_STEPS, MIN_LR_FRACTION = 2e-3, 100, 0.1
MASK_RATIO, MEAN_SPAN = 0.15, 3.0

ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --- corpus ----------------------------------------------------------------------------------------------------
def fetch_corpus(workdir: Path) -> Path:
    """Download and unpack the fortune packages (no installation); return the folder of fortune files."""
    workdir.mkdir(parents=True, exist_ok=True)
    unpacked = workdir / "root"
    if not (unpacked / FORTUNE_DIR / "tang300").exists():
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=workdir, check=True)
        for deb in sorted(workdir.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    return unpacked / FORTUNE_DIR


def read_documents(fortune_dir: Path) -> dict[str, list[str]]:
    """Documents per language: the ``%``-separated entries of every fortune file, colour codes removed."""
    docs: dict[str, list[str]] = {"en": [], "zh": [], "poems": []}
    for path in sorted(fortune_dir.iterdir()):
        if path.suffix in (".dat", ".u8") or path.name in SKIPPED_FILES or path.is_dir():
            continue
        text = ANSI.sub("", path.read_text(encoding="utf-8", errors="replace"))
        entries = [e.strip() for e in re.split(r"^%$", text, flags=re.MULTILINE) if e.strip()]
        language = "zh" if path.name in CHINESE_FILES else "en"
        docs[language].extend(entries)
        if path.name in ("tang300", "song100"):
            docs["poems"].extend(entries)
    return docs


def is_heldout(doc: str, kind: str = "en") -> bool:
    """A fixed pseudo-random share of documents (by content hash) that training never sees."""
    return int(hashlib.sha256(doc.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT[kind]


# --- tokenizer -------------------------------------------------------------------------------------------------
def train_tokenizer(documents: list[str], output: Path) -> None:
    spm.set_random_generator_seed(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(d.replace("\n", " ") for d in documents), encoding="utf-8")
        prefix = Path(tmp) / "demo"
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(prefix),
            vocab_size=PIECES,
            model_type="unigram",
            character_coverage=0.9995,
            normalization_rule_name="nmt_nfkc",
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=False,
            seed_sentencepiece_size=1_000_000,
            num_threads=1,
            max_sentence_length=8192,
            minloglevel=2,
        )
        data = (prefix.with_suffix(".model")).read_bytes()
    write_atomically(output, lambda tmp: tmp.write_bytes(data))


def demo_config() -> GLMConfig:
    n = PIECES
    layout = VocabLayout(
        text_offset=0,
        mask=n,
        gmask=n + 1,
        smask=n + 2,
        eod=n + 3,
        sop=n + 4,
        eop=n + 5,
        enc=n + 6,
        dblock=n + 7,
        eos=2,
        pad=0,
    )
    vocab = math.ceil((n + 8) / 64) * 64
    return GLMConfig(
        num_layers=LAYERS,
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        inner_hidden_size=INNER,
        vocab_size=vocab,
        max_sequence_length=512,
        vocab_layout=layout,
    )


# --- the blank-infilling objective -----------------------------------------------------------------------------
@dataclass
class Sample:
    inputs: list[int]
    positions: list[int]
    targets: list[int]  # -100 where no loss
    context_length: int  # part A plus the first sop: bidirectional before it, causal from it


def mask_sample(tokens: list[int], layout: VocabLayout, rng: random.Random) -> Sample:
    """Spans (lengths ~ Poisson(3)) covering ~15% of the tokens become [MASK]; each is regenerated after sop."""
    n = len(tokens)
    budget = max(1, round(MASK_RATIO * n))
    lengths: list[int] = []
    while sum(lengths) < budget:
        lengths.append(max(1, min(_poisson(rng, MEAN_SPAN), budget - sum(lengths))))
    free = n - sum(lengths)
    cuts = sorted(rng.randint(0, free) for _ in lengths)
    gaps = [b - a for a, b in zip([0, *cuts], [*cuts, free])]
    part_a, spans, mask_positions, cursor = [], [], [], 0
    for gap, length in zip(gaps, lengths):
        part_a += tokens[cursor : cursor + gap]
        cursor += gap
        mask_positions.append(len(part_a))
        part_a.append(layout.mask)
        spans.append(tokens[cursor : cursor + length])
        cursor += length
    part_a += tokens[cursor:]
    if part_a[-1] != layout.mask:
        part_a.append(layout.eos)
    inputs, positions, targets = list(part_a), list(range(len(part_a))), [-100] * len(part_a)
    for span, at in zip(spans, mask_positions):
        inputs += [layout.sop, *span]
        positions += [at] * (len(span) + 1)
        targets += [*span, layout.eop]
    return Sample(inputs, positions, targets, len(part_a) + 1)


def gmask_sample(tokens: list[int], layout: VocabLayout, rng: random.Random) -> Sample:
    """A prefix ending in [gMASK]; the rest of the window is generated after sop with continuing positions."""
    cut = rng.randint(0, len(tokens) - 1)
    part_a = [*tokens[:cut], layout.gmask]
    inputs = [*part_a, layout.sop, *tokens[cut:]]
    targets = [-100] * len(part_a) + [*tokens[cut:], layout.eop]
    return Sample(inputs, list(range(len(inputs))), targets, len(part_a) + 1)


def _poisson(rng: random.Random, mean: float) -> int:
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def text_window(stream: list[int], rng: random.Random) -> list[int]:
    """A random stretch of the token stream (documents back to back), of a random length: short ones teach the
    short prompts people type, long ones train every position up to the maximum."""
    length = rng.randint(MIN_SAMPLE_TOKENS, MAX_SAMPLE_TOKENS)
    start = rng.randrange(len(stream) - length)
    return stream[start : start + length]


def pack_rows(samples: list[Sample], pad_id: int, length: int) -> tuple[torch.Tensor, ...]:
    """Samples packed side by side into rows of ``length`` tokens: each keeps its own positions and a block of the
    attention mask to itself (nothing attends across samples), so no compute goes to padding.

    Returns ids, positions, the blocked mask (leftover pad columns see only themselves) and targets.
    """
    rows: list[list[Sample]] = []
    for sample in sorted(samples, key=lambda s: -len(s.inputs)):  # first fit, longest first
        row = next((r for r in rows if sum(len(x.inputs) for x in r) + len(sample.inputs) <= length), None)
        if row is None:
            rows.append(row := [])
        row.append(sample)
    ids = torch.full((len(rows), length), pad_id)
    positions = torch.zeros(len(rows), length, dtype=torch.long)
    targets = torch.full((len(rows), length), -100)
    blocked = torch.ones(len(rows), 1, length, length, dtype=torch.bool)
    blocked[:, 0, torch.arange(length), torch.arange(length)] = False
    for i, row in enumerate(rows):
        at = 0
        for s in row:
            n = len(s.inputs)
            ids[i, at : at + n] = torch.tensor(s.inputs)
            positions[i, at : at + n] = torch.tensor(s.positions)
            targets[i, at : at + n] = torch.tensor(s.targets)
            blocked[i, 0, at : at + n, at : at + n] = generation_blocked(s.context_length, n)
            at += n
    return ids, positions, blocked, targets


# --- training --------------------------------------------------------------------------------------------------
def initial_weights(config: GLMConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """GPT-style init: N(0, 0.02) linears and embeddings, unit LayerNorms, zero biases."""
    out = {}
    for key, shape in parameter_shapes(config).items():
        if key.endswith("layernorm.weight"):
            out[key] = torch.ones(shape)
        elif key.endswith("bias"):
            out[key] = torch.zeros(shape)
        else:
            out[key] = torch.randn(shape, generator=gen) * 0.02
    return out


def train(config: GLMConfig, stream: list[int], minutes: float, rng: random.Random, steps: int | None = None) -> dict:
    """Train for ``steps`` steps, or for ``minutes`` with the schedule's length fixed from the measured speed."""
    gen = torch.Generator().manual_seed(SEED)
    params = {k: v.requires_grad_() for k, v in initial_weights(config, gen).items()}
    model = DecoderModel.from_state_dict(config, params, CpuOps(torch.device("cpu"), torch.float32))
    # fp32 on the CPU needs no conversion, so the model holds these very leaf tensors and training updates it
    assert model.weights.word_embeddings is params["transformer.word_embeddings.weight"]
    decay = [p for k, p in params.items() if p.dim() == 2]
    no_decay = [p for k, p in params.items() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0}],
        lr=PEAK_LR,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    layout = config.vocab_layout
    deadline = time.monotonic() + minutes * 60
    started, step, tokens_seen, losses = time.monotonic(), 0, 0, []
    total_steps = steps
    while step < total_steps if steps else time.monotonic() < deadline:
        if total_steps is None and step == 20:  # fix the schedule's length from the measured speed
            total_steps = int(minutes * 60 / ((time.monotonic() - started) / 20))
            print(f"schedule: {total_steps} steps (rerun with --steps {total_steps} to reproduce it)", flush=True)
        total = total_steps or 10**9
        progress = min(1.0, max(0.0, (step - WARMUP_STEPS) / max(1, total - WARMUP_STEPS)))
        lr = (
            PEAK_LR
            * min(1.0, (step + 1) / WARMUP_STEPS)
            * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = []
        for _ in range(BATCH):
            builder = mask_sample if rng.random() < 0.5 else gmask_sample
            batch.append(builder(text_window(stream, rng), layout, rng))
        ids, positions, blocked, targets = pack_rows(batch, layout.pad, config.max_sequence_length)
        logits = model.forward(ids, positions, blocked)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        tokens_seen += int((targets != -100).sum())
        step += 1
        if step % 50 == 0:
            elapsed = time.monotonic() - started
            print(
                f"step {step:5d}  loss {sum(losses[-50:]) / 50:.3f}  lr {lr:.2e}  {elapsed / 60:.1f} min  "
                f"{tokens_seen / elapsed:.0f} target tokens/s",
                flush=True,
            )
    print(f"trained {step} steps in {(time.monotonic() - started) / 60:.1f} min, {tokens_seen} target tokens")
    return {k: v.detach() for k, v in params.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=38.0, help="training time budget")
    parser.add_argument("--steps", type=int, default=None, help="train exactly this many steps instead")
    parser.add_argument("--corpus-dir", type=Path, default=Path(tempfile.gettempdir()) / "glm-demo-corpus")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--output", type=Path, default=OUTPUT_DIR, help="model folder (default: the shipped one)")
    parser.add_argument("--heldout-dir", type=Path, default=HELDOUT_DIR)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = random.Random(SEED)
    torch.manual_seed(SEED)

    docs = read_documents(fetch_corpus(args.corpus_dir))
    poems = set(docs["poems"])
    train_docs = [d for d in docs["en"] + docs["zh"] if not is_heldout(d, "poems" if d in poems else "en")]
    heldout_en = [d for d in docs["en"] if is_heldout(d)]
    heldout_zh = [d for d in docs["poems"] if is_heldout(d, "poems")]
    size = sum(len(d.encode()) for d in train_docs)
    print(
        f"corpus: {len(train_docs)} training documents, {size / 1e6:.2f} MB; held out {len(heldout_en)} English "
        f"fortunes and {len(heldout_zh)} poems"
    )

    output, heldout_dir = args.output, args.heldout_dir
    output.mkdir(parents=True, exist_ok=True)
    heldout_dir.mkdir(parents=True, exist_ok=True)
    for name, heldout in (("demo_heldout_en.txt", heldout_en), ("demo_heldout_zh.txt", heldout_zh)):
        text = "\n\n".join(heldout) + "\n"
        write_atomically(heldout_dir / name, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
    started = time.monotonic()
    train_tokenizer(train_docs, output / "ice_text.model")
    print(f"tokenizer: {PIECES} pieces in {time.monotonic() - started:.1f} s")

    config = demo_config()
    sp = spm.SentencePieceProcessor(model_file=str(output / "ice_text.model"))
    order = list(train_docs)
    rng.shuffle(order)  # neighbours in the stream come from anywhere in the corpus
    stream = [token for doc in order for token in sp.encode(doc)]
    print(f"model: {config.num_parameters() / 1e6:.2f}M parameters; {len(stream)} training tokens")
    weights = train(config, stream, args.minutes, rng, args.steps)
    save_native(output, config, {k: v.to(torch.float16) for k, v in weights.items()})
    print(f"saved to {output}")


if __name__ == "__main__":
    main()
