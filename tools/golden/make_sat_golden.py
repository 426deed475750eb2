"""Generate golden tensors for glm-engine from the reference implementation.

The reference is SwissArmyTransformer's ``GLM130B`` class (SAT 0.4.12 from PyPI), driven on CPU in fp16 with a
tiny random config.  This script only *imports and drives* SAT; it contains no SAT code.  It writes
``tests/golden/sat_glm130b_tiny.safetensors`` (state dict as SAT names it + per-case inputs, logits and greedy
tokens, for two rotary-table recipes).

Setup (a separate venv, outside the repo; never install SAT into the project's .venv)::

    python3 -m venv /work/satenv
    /work/satenv/bin/pip install torch==2.13.0 SwissArmyTransformer==0.4.12
    # SAT 0.4.12 imports these at package import time without declaring them:
    /work/satenv/bin/pip install triton==3.9.0 wandb==0.31.0 requests

    (torch must be pinned exactly: an unpinned torch pulls a multi-GB CUDA build.)

Run from the repository root::

    /work/satenv/bin/python tools/golden/make_sat_golden.py            # writes the golden file
    /work/satenv/bin/python tools/golden/make_sat_golden.py --check    # regenerates in memory, compares to the file

What is generated
-----------------
* Model: 3 layers, hidden 64, 4 heads (head dim 16), GeGLU inner 128, vocab 256, max seq 128, LN eps 1e-5.
  Random seeded weights (init scales below), stored fp16.  Rotary ``inv_freq`` buffers are not stored.
* Cases (batch 1), built with GLM-130B's ``generate.py`` rules:
    - ``mask``:  10 tokens with [MASK] at index 3, then eos (text does not end with a mask), then sop.
                 Positions 0..ctx-2 for the prefix; sop and every generated token take the mask's position (3).
    - ``gmask``: 10 tokens then [gMASK] (text ends with a mask, so no eos), then sop.  Positions continue 0..T-1.
  Mask: ``M = tril(ones(T,T)); M[:, :ctx-1] = 1; blocked = M < 0.5`` with ctx including sop, T = ctx + 32.
* Decode: exactly GLM-130B's ``batch_filling_sequence`` with greedy choice: one prefill forward over the context
  (incl. sop), then incremental forwards feeding only the new token, its position and mask rows
  ``[index:counter+1, :counter+1]`` with SAT's KV cache (``mems``, concatenated by SAT's ``update_mems``).  32
  forwards give 32 tokens; token k = argmax(step_logits[k]).  End tokens (eos/eop) do NOT stop the loop here.
* Rotary recipes:
    - ``sat-0.4``: SAT 0.4.12 as installed: fp32 inv_freq, fp32 positions, fp32 cos/sin cast to the activation
      dtype (fp16).
    - ``sat-0.2``: SAT 0.2.12 / GLM-130B release: inv_freq cast to fp16, positions arange in fp16, fp16 outer
      product, cos/sin evaluated on fp16 tensors.  Installed by monkeypatching the rotary module instance.
  SAT's cos/sin tables for each recipe are stored too (``rotary.<recipe>.cos|sin``, ``[max_seq, head_dim]``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import types
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT_PATH = REPO_ROOT / "tests" / "golden" / "sat_glm130b_tiny.safetensors"
GENERATOR = "tools/golden/make_sat_golden.py"

# Picked with INIT["linear_gain"] by a search over gains {1.0, 1.25, 1.5} x seeds 0..199 (1.25: 0..999), all four
# recipe/case runs required to give: >= 10 distinct greedy tokens of 32, <= 3 immediate repeats, min top1-top2
# margin of the step logits >= 0.1, and fp16 logits of an independent implementation within NMSE 3e-6 of SAT's.
# Gain 1.0 is rarely non-trivial, gain 1.5 exceeds the NMSE bound; of 29 passing seeds (all gain 1.25), 520 has
# the second-largest margin (0.234; the largest, 0.266, decodes mostly a 2-cycle with 10-11 distinct tokens).
SEED = 520
CONFIG = {
    "num_layers": 3,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "inner_hidden_size": 128,
    "vocab_size": 256,
    "max_sequence_length": 128,
    "layernorm_epsilon": 1e-5,
}
SPECIAL_IDS = {"MASK": 250, "gMASK": 251, "sop": 252, "eos": 253, "eop": 254}
N_GEN = 32
N_TEXT = 10  # text tokens before eos/sop, including the mask token
MASK_INDEX = 3  # where [MASK] sits in the `mask` case

# Init scales.  The output embedding is tied (logits = LN_final(x) @ E^T) and the DeepNorm residual keeps the
# input token's own embedding dominant in x, so with LN weights near 1 the argmax is the token just fed in and
# greedy decoding repeats it forever.  Breaking that with large linear gains (amplifying the layers until they
# outweigh the residual) makes the tiny model chaotic: fp16 rounding noise is amplified to NMSE ~1e-4 against
# an exact computation.  Instead the FINAL LayerNorm weight gets a random sign (N(0, 1), mean 0): it scrambles
# the direction of LN_final(x) so it no longer points at the input token's own embedding row, without amplifying
# anything inside the layers.  Linear gain and seed were picked by a search (see SEED).
INIT = {
    "embedding_std": 1.0,
    "linear_gain": 1.25,  # weight std = gain / sqrt(fan_in), all four linears
    "linear_bias_std": 0.1,
    "ln_weight_mean": 1.0,  # per-layer input/post-attention LayerNorms
    "ln_weight_std": 0.2,
    "ln_bias_std": 0.1,  # all LayerNorms, final included
    "final_ln_weight_mean": 0.0,  # transformer.final_layernorm.weight: random sign, see above
    "final_ln_weight_std": 1.0,
}
RECIPES = ("sat-0.2", "sat-0.4")
CASES = ("mask", "gmask")


# ---------------------------------------------------------------------------------------------------------------
# CPU patches for SAT 0.4.12 (runtime monkeypatches; SAT itself is not edited)
# ---------------------------------------------------------------------------------------------------------------


def apply_cpu_patches():
    # PATCH 1: SAT calls torch.cuda.current_device() to pick the device of the rotary buffer
    # (RotaryEmbeddingMixin.__init__) and of the score buffer in attention_fn (torch.empty(..., device=...)).
    # On a CPU-only torch that raises; make it answer "cpu".
    torch.cuda.current_device = lambda: "cpu"

    # PATCH 2: BaseTransformer.forward does `attention_mask = attention_mask.type_as(params)`, turning our bool
    # mask (True = blocked) into fp16 0/1.  GLM130B's attention_fn then calls masked_fill_(mask, -10000), which
    # requires a bool mask.  Cast it back to bool (exact: the values are 0.0/1.0) before SAT's attention_fn runs.
    # Must run before the model is built: SAT collects the hook (bound method) at add_mixin time.
    from sat.model.official import glm130B_model as gm

    cls = gm.SelfAttentionWithFP32SoftmaxMixin
    if not getattr(cls, "_golden_bool_mask_patch", False):
        original = cls.attention_fn

        def attention_fn(self, query_layer, key_layer, value_layer, attention_mask, *args, **kwargs):
            return original(self, query_layer, key_layer, value_layer, attention_mask.bool(), *args, **kwargs)

        cls.attention_fn = attention_fn
        cls._golden_bool_mask_patch = True

    # PATCH 3: DeepNormWithGLUMixin.reinit() re-creates each mlp.dense_h_to_4h with skip_init=True, so its
    # weights are uninitialised memory.  init_weights() below overwrites EVERY parameter (incl. those) with
    # seeded values and asserts that all are finite; see there.


# ---------------------------------------------------------------------------------------------------------------
# Rotary recipes
# ---------------------------------------------------------------------------------------------------------------


def _sat02_rotary_forward(self, x, seq_dim=1, seq_len=None):
    """Rotary table as SAT 0.2.12 builds it (docs/glm-semantics.md#rotary-embedding): everything in the inv_freq dtype
    (fp16).

    Replaces RotaryEmbedding.forward on one instance.  Same interface and caching rule as SAT: rebuild only when
    a longer table is requested; return table[:seq_len] of shape [seq, 1, dim].
    """
    if seq_len is None:
        seq_len = x.shape[seq_dim]
    seq_len = int(seq_len)
    if self.max_seq_len_cached is None or seq_len > self.max_seq_len_cached:
        self.max_seq_len_cached = seq_len
        assert self.inv_freq.dtype == torch.float16
        positions = torch.arange(seq_len, device=x.device, dtype=torch.float16)
        angles = torch.einsum("i,j->ij", positions, self.inv_freq)  # fp16 product
        assert angles.dtype == torch.float16
        angles = torch.cat((angles, angles), dim=-1)
        self.cos_cached = angles.cos()[:, None, :]  # fp16 in, fp16 out
        self.sin_cached = angles.sin()[:, None, :]
    return self.cos_cached[:seq_len, ...], self.sin_cached[:seq_len, ...]


def _inv_freq_fp32(dim, base=10000):
    return 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))


def set_rotary_recipe(model, recipe):
    rot = model.mixins["rotary-embedding"].rotary_emb
    dim = CONFIG["hidden_size"] // CONFIG["num_attention_heads"]
    # Drop any cached table so the next forward rebuilds it with the selected recipe.
    rot.max_seq_len_cached = None
    rot.cos_cached = None
    rot.sin_cached = None
    if recipe == "sat-0.4":
        rot.__dict__.pop("forward", None)  # SAT 0.4.12's own RotaryEmbedding.forward
        rot.inv_freq = _inv_freq_fp32(dim)  # fp32 buffer, as SAT 0.4.12 constructs it
    elif recipe == "sat-0.2":
        rot.forward = types.MethodType(_sat02_rotary_forward, rot)
        rot.inv_freq = _inv_freq_fp32(dim).half()  # SAT 0.2.12: inv_freq = inv_freq.half()
    else:
        raise ValueError(recipe)


def rotary_table(model, n):
    rot = model.mixins["rotary-embedding"].rotary_emb
    rot.max_seq_len_cached = None
    cos, sin = rot(torch.zeros(1, dtype=torch.float16), seq_len=n)
    rot.max_seq_len_cached = None
    return cos.clone(), sin.clone()


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def build_model():
    from sat.arguments import get_args
    from sat.model.official.glm130B_model import GLM130B

    parser = argparse.ArgumentParser()
    GLM130B.add_model_specific_args(parser)
    c = CONFIG
    args = get_args(
        [
            "--mode",
            "inference",
            "--distributed-backend",
            "gloo",
            "--fp16",
            "--num-layers",
            str(c["num_layers"]),
            "--hidden-size",
            str(c["hidden_size"]),
            "--num-attention-heads",
            str(c["num_attention_heads"]),
            "--inner-hidden-size",
            str(c["inner_hidden_size"]),
            "--vocab-size",
            str(c["vocab_size"]),
            "--max-sequence-length",
            str(c["max_sequence_length"]),
            "--layernorm-epsilon",
            str(c["layernorm_epsilon"]),
            "--model-parallel-size",
            "1",
            "--seed",
            str(SEED),
        ],
        parser,
    )
    assert args.world_size == 1 and args.model_parallel_size == 1 and args.fp16
    model = GLM130B(args).eval()
    return model


def init_weights(model):
    """Overwrite every parameter with seeded values (covers PATCH 3) and store all parameters as fp16.

    The rotary inv_freq buffer is left alone (set_rotary_recipe owns it).  Parameters SAT creates in fp32
    (LayerNorms) are cast to fp16 so the stored state dict is uniformly fp16; SAT's CPU LayerNorm upcasts x,
    weight and bias to fp32 anyway.
    """
    g = torch.Generator().manual_seed(SEED)
    s = INIT

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean

    for name, p in sorted(model.named_parameters()):
        shape = tuple(p.shape)
        if name.endswith("word_embeddings.weight"):
            val = normal(shape, s["embedding_std"])
        elif name == "transformer.final_layernorm.weight":
            val = normal(shape, s["final_ln_weight_std"], s["final_ln_weight_mean"])
        elif "layernorm" in name and name.endswith(".weight"):
            val = normal(shape, s["ln_weight_std"], s["ln_weight_mean"])
        elif "layernorm" in name and name.endswith(".bias"):
            val = normal(shape, s["ln_bias_std"])
        elif name.endswith(".weight"):
            assert len(shape) == 2, name
            val = normal(shape, s["linear_gain"] / math.sqrt(shape[1]))
        elif name.endswith(".bias"):
            val = normal(shape, s["linear_bias_std"])
        else:
            raise AssertionError(f"unexpected parameter {name}")
        p.data = val.to(torch.float16)
        assert torch.isfinite(p.data).all(), name
    return model


def state_dict_fp16(model):
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("inv_freq"):
            continue
        assert v.dtype == torch.float16, (k, v.dtype)
        sd[k] = v.detach().clone().contiguous()
    return sd


# ---------------------------------------------------------------------------------------------------------------
# Inputs (GLM-130B generate.py rules, docs/glm-semantics.md#masks-and-positions)
# ---------------------------------------------------------------------------------------------------------------


def make_case(case, g):
    text = torch.randint(0, min(SPECIAL_IDS.values()), (N_TEXT,), generator=g).tolist()
    if case == "mask":
        text[MASK_INDEX] = SPECIAL_IDS["MASK"]
        seq = [*text, SPECIAL_IDS["eos"]]  # text does not end with a mask -> append eos
        mask_token = SPECIAL_IDS["MASK"]
    elif case == "gmask":
        text[-1] = SPECIAL_IDS["gMASK"]  # text ends with [gMASK] -> no eos
        seq = text
        mask_token = SPECIAL_IDS["gMASK"]
    else:
        raise ValueError(case)
    mask_position = seq.index(mask_token)
    input_ids = [*seq, SPECIAL_IDS["sop"]]
    ctx = len(input_ids)  # context_length includes sop
    T = ctx + N_GEN

    position_ids = torch.arange(T, dtype=torch.int64)
    if case == "mask":
        position_ids[ctx - 1 :] = mask_position
    m = torch.ones(T, T).tril()
    m[:, : ctx - 1] = 1
    blocked = m < 0.5
    return {
        "input_ids": torch.tensor([input_ids], dtype=torch.int64),
        "position_ids": position_ids[None],
        "attention_mask": blocked[None, None],
    }


# ---------------------------------------------------------------------------------------------------------------
# Driving SAT
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sat_forward(model, tokens, positions, mask, mems=None):
    logits, *per_layer = model(tokens, positions, mask, mems=mems)
    return logits, [o["mem_kv"] for o in per_layer]


@torch.no_grad()
def greedy_decode(model, case):
    """GLM-130B batch_filling_sequence (evaluation/model.py) with a greedy (argmax) strategy, batch 1."""
    from sat.generation.autoregressive_sampling import update_mems

    tokens = case["input_ids"].clone()
    pos = case["position_ids"]
    mask = case["attention_mask"]
    ctx = tokens.shape[1]
    T = pos.shape[1]
    counter, index, mems = ctx - 1, 0, None
    prefill_logits, step_logits, out_tokens = None, [], []
    while counter < T - 1:
        logits, mem_kv = sat_forward(
            model, tokens[:, index:], pos[..., index : counter + 1], mask[..., index : counter + 1, : counter + 1], mems
        )
        mems = update_mems(mem_kv, mems, max_memory_length=100000)
        if prefill_logits is None:
            prefill_logits = logits.clone()
            last = logits[0, ctx - 1]
        else:
            assert logits.shape[1] == 1
            last = logits[0, -1]
        counter += 1
        index = counter
        nxt = int(torch.argmax(last.float()))
        step_logits.append(last.clone())
        out_tokens.append(nxt)
        tokens = torch.cat([tokens, torch.tensor([[nxt]], dtype=tokens.dtype)], dim=1)
    assert len(out_tokens) == N_GEN
    return prefill_logits, torch.stack(step_logits), torch.tensor(out_tokens, dtype=torch.int64)


@torch.no_grad()
def full_recompute(model, case, tokens_out):
    """Logits of the last position of each prefix, each computed by SAT from scratch (no mems)."""
    ctx = case["input_ids"].shape[1]
    full = torch.cat([case["input_ids"], tokens_out[None, :-1]], dim=1)
    rows = []
    for k in range(N_GEN):
        n = ctx + k
        logits, _ = sat_forward(model, full[:, :n], case["position_ids"][:, :n], case["attention_mask"][..., :n, :n])
        rows.append(logits[0, -1])
    return torch.stack(rows)


def diagnostics(model):
    """Print which numerics paths SAT takes on this machine."""
    from sat.model.position_embedding.rotary_embeddings import apply_rotary_pos_emb_index
    from sat.ops.layernorm import LayerNorm

    sm = model.mixins["fp32-softmax"].scale_mask_softmax
    print(
        f"[diag] apex FusedScaleMaskSoftmax in use: {sm is not None} "
        f"(None -> masked_fill_(-10000) in fp16, then .float() * (layer_id+1), softmax fp32, .half())"
    )
    print(
        f"[diag] LayerNorm class: {LayerNorm.__mro__[1].__module__}.{LayerNorm.__mro__[1].__name__} "
        f"(CPU fp16 input -> computed in fp32, cast back)"
    )

    # Rotary application: SAT's TorchScript function vs per-op fp16 eager vs fp32-then-round.
    g = torch.Generator().manual_seed(7)
    sq, b, nh, hn = 9, 1, 4, 16
    q = torch.randn(sq, b, nh, hn, generator=g).half() * 3
    k = torch.randn(sq, b, nh, hn, generator=g).half() * 3
    set_rotary_recipe(model, "sat-0.4")
    cos, sin = rotary_table(model, 64)
    pos = torch.tensor([[0], [1], [2], [3], [17], [40], [63], [5], [3]])
    q_sat, _ = apply_rotary_pos_emb_index(q, k, cos, sin, pos)

    def rot_half(x):
        return torch.cat((-x[..., hn // 2 :], x[..., : hn // 2]), dim=-1)

    c = cos.squeeze(1)[pos].unsqueeze(2)
    s = sin.squeeze(1)[pos].unsqueeze(2)
    q_eager = q * c + rot_half(q) * s
    q_f32 = (q.float() * c.float() + rot_half(q).float() * s.float()).half()
    print(
        f"[diag] rotary apply: bit-equal to per-op fp16 eager: {torch.equal(q_sat, q_eager)}; "
        f"to fp32-then-round: {torch.equal(q_sat, q_f32)}"
    )


def max_table_diff(model, n):
    set_rotary_recipe(model, "sat-0.4")
    c4, s4 = rotary_table(model, n)
    set_rotary_recipe(model, "sat-0.2")
    c2, s2 = rotary_table(model, n)
    assert c4.dtype == c2.dtype == torch.float16
    d = max((c4.float() - c2.float()).abs().max().item(), (s4.float() - s2.float()).abs().max().item())
    ndiff = int((c4 != c2).sum() + (s4 != s2).sum())
    # What GLM-130B's initialize.py (`GLM130B(args).half()`) would give on SAT 0.4.12: .half() also casts the
    # inv_freq buffer, so angles = fp32(positions) * fp16-rounded inv_freq.  Informational only.
    rot = model.mixins["rotary-embedding"].rotary_emb
    set_rotary_recipe(model, "sat-0.4")
    rot.inv_freq = rot.inv_freq.half()
    ch, sh = rotary_table(model, n)
    dh = max((c4.float() - ch.float()).abs().max().item(), (s4.float() - sh.float()).abs().max().item())
    dh2 = max((c2.float() - ch.float()).abs().max().item(), (s2.float() - sh.float()).abs().max().item())
    set_rotary_recipe(model, "sat-0.4")
    return d, ndiff, dh, dh2


# ---------------------------------------------------------------------------------------------------------------


def generate():
    torch.manual_seed(SEED)
    torch.set_num_threads(1)  # fixed reduction order on CPU
    apply_cpu_patches()
    model = init_weights(build_model())
    assert not model.training

    diagnostics(model)
    n_table = CONFIG["max_sequence_length"]
    d, ndiff, dh, dh2 = max_table_diff(model, n_table)
    print(
        f"[rotary] positions 0..{n_table - 1}: max |sat-0.4 - sat-0.2| over cos/sin = {d:.3e} "
        f"({ndiff} of {2 * n_table * 16} entries differ)"
    )
    print(
        f"[rotary] (info) SAT 0.4.12 after model.half() (fp16 inv_freq, fp32 angles): max diff vs sat-0.4 "
        f"{dh:.3e}, vs sat-0.2 {dh2:.3e}"
    )
    assert ndiff > 0 and d > 0, "sat-0.2 patch did not change the rotary table"

    g = torch.Generator().manual_seed(SEED + 1)
    cases = {c: make_case(c, g) for c in CASES}

    tensors = dict(state_dict_fp16(model))
    summary = {}
    for recipe in RECIPES:
        for cname in CASES:
            set_rotary_recipe(model, recipe)
            case = cases[cname]
            prefill, steps, toks = greedy_decode(model, case)
            ref = full_recompute(model, case, toks)
            diff = (steps.float() - ref.float()).abs().max().item()
            top2 = steps.float().topk(2, dim=-1).values
            margin = (top2[:, 0] - top2[:, 1]).min().item()
            ids = case["input_ids"][0].tolist()
            prev = [ids[-1], *toks.tolist()[:-1]]
            repeats = sum(int(a == b) for a, b in zip(toks.tolist(), prev, strict=True))
            distinct = len(set(toks.tolist()))
            for name, t in (("prefill_logits", prefill), ("step_logits", steps)):
                assert torch.isfinite(t).all(), (recipe, cname, name)
            assert torch.equal(steps[0], prefill[0, -1])
            print(f"[{recipe}/{cname}] ctx={len(ids)} input={ids}")
            print(f"[{recipe}/{cname}] positions={case['position_ids'][0].tolist()}")
            print(f"[{recipe}/{cname}] greedy={toks.tolist()}")
            print(
                f"[{recipe}/{cname}] distinct={distinct} repeats_of_prev={repeats} "
                f"min_top1_top2_margin={margin:.4f} |logit|max={steps.float().abs().max().item():.2f} "
                f"max|incremental - full recompute|={diff:.3e}"
            )
            # fp16 kernels differ between the M=1 and M=n GEMMs, so a few ulps (ulp(32) = 0.031) are expected.
            assert diff < 0.25, "incremental decode disagrees with full recompute: cache path driven wrongly?"
            assert torch.equal(ref.float().argmax(-1), toks), "full recompute picks other greedy tokens"
            assert margin > 0, "exact tie in greedy choice"
            summary[(recipe, cname)] = toks
            p = f"cases.{recipe}.{cname}."
            tensors[p + "input_ids"] = case["input_ids"].clone()
            tensors[p + "position_ids"] = case["position_ids"].clone()
            tensors[p + "attention_mask"] = case["attention_mask"].clone()
            tensors[p + "prefill_logits"] = prefill.contiguous()
            tensors[p + "greedy_tokens"] = toks
            tensors[p + "step_logits"] = steps.contiguous()
    # SAT's own cos/sin tables per recipe, so the engine's tables can be compared bit for bit.
    for recipe in RECIPES:
        set_rotary_recipe(model, recipe)
        cos, sin = rotary_table(model, n_table)
        tensors[f"rotary.{recipe}.cos"] = cos[:, 0, :].contiguous()
        tensors[f"rotary.{recipe}.sin"] = sin[:, 0, :].contiguous()
    # Negative control: the `mask` prefill driven with a wrong rule (gMASK-style continuing position for sop)
    # must move the sop-row logits far more than the incremental-vs-full noise above.
    set_rotary_recipe(model, "sat-0.4")
    case = cases["mask"]
    ctx = case["input_ids"].shape[1]
    good, _ = sat_forward(
        model, case["input_ids"], case["position_ids"][:, :ctx], case["attention_mask"][..., :ctx, :ctx]
    )
    bad, _ = sat_forward(model, case["input_ids"], torch.arange(ctx)[None], case["attention_mask"][..., :ctx, :ctx])
    print(
        f"[control] mask case, sop at position {ctx - 1} instead of {MASK_INDEX}: max|sop-row logit diff| = "
        f"{(good[0, -1].float() - bad[0, -1].float()).abs().max().item():.2f}"
    )
    for cname in CASES:
        a, b = summary[("sat-0.2", cname)], summary[("sat-0.4", cname)]
        la = tensors[f"cases.sat-0.2.{cname}.step_logits"].float()
        lb = tensors[f"cases.sat-0.4.{cname}.step_logits"].float()
        print(
            f"[recipes/{cname}] greedy tokens identical across recipes: {torch.equal(a, b)}; "
            f"max|step_logits sat-0.2 - sat-0.4| = {(la - lb).abs().max().item():.3e}"
        )

    import sat

    metadata = {
        "config": json.dumps(CONFIG),
        "special_ids": json.dumps(SPECIAL_IDS),
        "sat_version": sat.__version__,
        "torch_version": torch.__version__,
        "generator": GENERATOR,
        "seed": str(SEED),
        "init": json.dumps(INIT),
        "recipes": json.dumps(
            {
                "sat-0.4": "SAT 0.4.12 RotaryEmbedding: fp32 inv_freq and positions, fp32 cos/sin cast to fp16",
                "sat-0.2": "SAT 0.2.12: fp16 inv_freq, fp16 positions, fp16 outer product, cos/sin on fp16",
            }
        ),
        "decode": (
            "batch_filling_sequence with argmax; greedy_tokens[k] = argmax(step_logits[k]); "
            "step_logits[0] = prefill logits at ctx-1; no early stop on eos/eop"
        ),
        "attention_mask": "bool, True = blocked",
    }
    return tensors, metadata


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT_PATH)
    ap.add_argument("--check", action="store_true", help="compare against the existing file instead of writing")
    opts = ap.parse_args()
    from safetensors.torch import load_file, save_file

    tensors, metadata = generate()
    if opts.check:
        from safetensors import safe_open

        ref = load_file(str(opts.out))
        with safe_open(str(opts.out), "pt") as f:
            ref_meta = f.metadata()
        assert set(ref) == set(tensors), set(ref) ^ set(tensors)
        bad = [k for k in tensors if not torch.equal(ref[k], tensors[k])]
        bad += [f"metadata:{k}" for k in set(ref_meta) | set(metadata) if ref_meta.get(k) != metadata.get(k)]
        print(f"[check] {len(tensors)} tensors + metadata; {len(bad)} differ: {bad[:10]}")
        sys.exit(1 if bad else 0)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(opts.out), metadata=metadata)
    size = os.path.getsize(opts.out)
    print(f"[out] wrote {opts.out} ({len(tensors)} tensors, {size} bytes = {size / 1024:.1f} KiB)")
    assert size < 1 << 20


if __name__ == "__main__":
    main()
