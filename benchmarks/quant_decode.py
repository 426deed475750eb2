"""Batch-1 decode speed of quantized weights on the CPU backend: bf16 against INT8 and INT4 through the GLM graph.

Builds one random GLM whose weights are far larger than the CPU's caches, quantizes its four linears per layer
(``ops.prepare_quantized(QuantizedWeight.quantize(...))``, what loading a quantized checkpoint does), and times decode
steps of every variant in interleaved rounds, so machine noise hits them alike. Decode reads every weight once per
token, so ``bytes streamed / time per token`` next to the read bandwidth measured in the same process shows how close
each format runs to the memory roofline. Embeddings, LayerNorms and biases stay bf16 in every variant, as in the
reference; a small vocabulary keeps the (unquantized) output projection from dominating a model of a few layers.
Prints a table; asserts nothing. Run: ``python benchmarks/quant_decode.py [--layers 6 --hidden 4096 ...]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import fields, replace

import torch
from decode import measure_bandwidth

from glm_engine.backends.cpu import CpuBackend
from glm_engine.config import GLMConfig
from glm_engine.generation.masks import generation_blocked
from glm_engine.model.glm import GLMModel
from glm_engine.model.weights import GLMWeights, LayerWeights, layer_key, random_state_dict
from glm_engine.ops.interface import OpTable, PackedLinear
from glm_engine.quant.weight import QuantizedWeight
from glm_engine.vocab import VocabLayout

# name -> (bits, group size) of the quantized linears; None keeps them bf16.
VARIANTS: dict[str, tuple[int, int | None] | None] = {
    "bf16": None,
    "int8-rowwise": (8, None),
    "int8-groupwise(128)": (8, 128),
    "int4-rowwise": (4, None),
    "int4-groupwise(128)": (4, 128),
}
LINEARS = ("query_key_value_weight", "dense_weight", "dense_h_to_4h_weight", "dense_4h_to_h_weight")
SPECIAL_TOKENS = 8  # the GLM special ids sit at the top of the small vocabulary


def small_vocab_layout(vocab: int) -> VocabLayout:
    """GLM's special tokens in the last ids of a ``vocab``-sized vocabulary."""
    top = vocab - SPECIAL_TOKENS
    names = ("mask", "gmask", "smask", "eod", "sop", "eop", "enc", "dblock")
    return VocabLayout(text_offset=0, eos=2, pad=0, **{name: top + i for i, name in enumerate(names)})


def build(
    base: GLMWeights, state_dict: dict[str, torch.Tensor], ops: OpTable, scheme: tuple[int, int | None] | None
) -> GLMWeights:
    """``base`` (bf16) with each layer's linears quantized from the fp32 ``state_dict`` and packed for ``ops``."""
    if scheme is None:
        return base
    bits, group_size = scheme
    layers = [
        replace(
            layer,
            **{
                name: ops.prepare_quantized(QuantizedWeight.quantize(state_dict[layer_key(n, name)], bits, group_size))
                for name in LINEARS
            },
        )
        for n, layer in enumerate(base.layers)
    ]
    return replace(base, layers=layers)


def streamed_bytes(weights: GLMWeights) -> int:
    """Bytes read per decode token: every tensor and packed weight once (the output projection is the embedding)."""

    def size(t: torch.Tensor | PackedLinear) -> int:
        return t.nbytes if isinstance(t, PackedLinear) else t.numel() * t.element_size()

    per_layer = sum(size(getattr(layer, f.name)) for layer in weights.layers for f in fields(LayerWeights))
    return per_layer + sum(size(t) for t in (weights.word_embeddings, weights.final_layernorm_weight))


def decode_round(model: GLMModel, context: int, steps: int, vocab: int, seed: int) -> list[float]:
    """Seconds per decode step for ``steps`` tokens after a ``context``-token prefill (the first step discarded)."""
    total = context + steps + 1
    blocked = generation_blocked(context, total)[None, None]
    positions = torch.arange(total).unsqueeze(0)
    tokens = torch.randint(0, vocab - SPECIAL_TOKENS, (1, total), generator=torch.Generator().manual_seed(seed))
    cache = model.new_cache(1, total)
    model.forward(tokens[:, :context], positions[:, :context], blocked[..., :context, :context], cache, last_only=True)
    times = []
    for col in range(context, total):
        start = time.perf_counter()
        step = slice(col, col + 1)
        model.forward(tokens[:, step], positions[:, step], blocked[..., step, : col + 1], cache)
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--inner", type=int, default=10880, help="GeGLU inner width (GLM-130B uses 8/3 of hidden)")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed tokens per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()

    config = GLMConfig(
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_attention_heads=args.heads,
        inner_hidden_size=args.inner,
        vocab_size=args.vocab,
        max_sequence_length=2048,
        vocab_layout=small_vocab_layout(args.vocab),
    )
    backend = CpuBackend()
    ops = backend.op_table(torch.bfloat16)
    state_dict = random_state_dict(config, seed=0)
    base = GLMWeights.from_state_dict(state_dict, config, torch.bfloat16, "cpu")
    models: dict[str, tuple[GLMModel, int]] = {}
    for name in args.variants.split(","):
        start = time.perf_counter()
        weights = build(base, state_dict, ops, VARIANTS[name])
        models[name] = (GLMModel(config, weights, ops), streamed_bytes(weights))
        print(f"built {name} in {time.perf_counter() - start:.1f} s", flush=True)
    del state_dict
    read_bw, copy_bw = measure_bandwidth(torch.device("cpu"))

    times: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(args.rounds):
        for name, (model, _) in models.items():
            times[name] += decode_round(model, args.context, args.steps, args.vocab, seed=round_index)
    read_bw = max(read_bw, measure_bandwidth(torch.device("cpu"))[0])

    print(
        f"\n{backend.devices()[0].name}, torch {torch.__version__}, {torch.get_num_threads()} threads; memory "
        f"bandwidth read {read_bw:.1f} GB/s, copy {copy_bw:.1f} GB/s (read+write, best of two measurements)"
    )
    print(
        f"model: {args.layers} layers, hidden {args.hidden}, inner {args.inner}, vocab {args.vocab}; bf16 "
        f"activations; context {args.context}; median of {args.rounds} x {args.steps} interleaved decode steps\n"
    )
    print("| weights | ms/token | tokens/s | GB streamed/token | weight GB/s | share of read bandwidth | vs bf16 |")
    print("|---|---|---|---|---|---|---|")
    bf16_rate = None
    for name, (_, nbytes) in models.items():
        median = statistics.median(times[name])
        gigabytes = nbytes / 1e9
        bf16_rate = bf16_rate or (1 / median if name == "bf16" else None)
        ratio = f"{(1 / median) / bf16_rate:.2f}x" if bf16_rate else ""
        print(
            f"| {name} | {median * 1e3:.1f} | {1 / median:.2f} | {gigabytes:.3f} | {gigabytes / median:.1f} | "
            f"{gigabytes / median / read_bw:.0%} | {ratio} |"
        )


if __name__ == "__main__":
    main()
