"""Tiny GLM-4 checkpoints made by transformers' own classes (``GlmForCausalLM``, ``Glm4ForCausalLM``) and the same
weights in THUDM's remote-code layout, for the parity tests of the causal families.

The remote-code folders follow the documented correspondence (``docs/families.md#glm-4-native``): q/k/v rows stacked
into ``query_key_value``, ``o_proj`` -> ``dense``, ``gate_up_proj`` -> ``dense_h_to_4h``, ``down_proj`` ->
``dense_4h_to_h``, ``rope_ratio = rope_theta / 10000``. The remote code rounds RMSNorm once, after the gain, and
ChatGLM2 builds its rotary table in the model's dtype; :func:`remote_numerics` patches the transformers reference to
compute those two things the documented remote way, so the remote layouts are checked against a reference too.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

transformers = __import__("pytest").importorskip("transformers")

TINY = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "pad_token_id": 0,
    "eos_token_id": [1],
}
CLASSES = {"glm": ("GlmForCausalLM", "GlmConfig"), "glm4": ("Glm4ForCausalLM", "Glm4Config")}


def reference_class(model_type: str) -> type:
    return getattr(transformers, CLASSES[model_type][0])


def make_native_folder(
    folder: Path, model_type: str, seed: int = 0, rope_theta: float = 10000.0, **overrides: object
) -> Path:
    """A transformers-saved tiny model with non-trivial norms and biases (``save_pretrained``, safetensors)."""
    config = getattr(transformers, CLASSES[model_type][1])(
        **{**TINY, **overrides},
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "partial_rotary_factor": 0.5},
    )
    torch.manual_seed(seed)
    model = reference_class(model_type)(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1 + 0.2 * torch.randn_like(parameter))
            elif name.endswith("bias"):
                parameter.copy_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    return folder


def native_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def make_remote_folder(native: Path, folder: Path, release: str) -> Path:
    """The native folder's weights under the remote-code names and config (``release``: chatglm2/chatglm3/glm4). A
    native model with one key/value head per query head becomes a remote config without ``multi_query_attention``,
    whose fused rows the reference views per head (``[q | k | v]`` of head 0, then head 1 ...)."""
    config = json.loads((native / "config.json").read_text())
    theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
    state = native_state_dict(native)
    out = {
        "transformer.embedding.word_embeddings.weight": state["model.embed_tokens.weight"],
        "transformer.encoder.final_layernorm.weight": state["model.norm.weight"],
        "transformer.output_layer.weight": state["lm_head.weight"],
        "transformer.rotary_pos_emb.inv_freq": torch.zeros(4),  # recomputed by every reader, never loaded
    }
    grouped = config["num_key_value_heads"] != config["num_attention_heads"]
    for n in range(config["num_hidden_layers"]):
        src, dst = f"model.layers.{n}.", f"transformer.encoder.layers.{n}."
        for kind in ("weight", "bias"):
            parts = [state[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"]
            if grouped:
                fused = torch.cat(parts)
            else:  # [heads, 3, head_dim, ...]: each head's q, k and v rows together
                heads = config["num_attention_heads"]
                fused = torch.stack([t.unflatten(0, (heads, -1)) for t in parts], dim=1).flatten(0, 2)
            out[dst + f"self_attention.query_key_value.{kind}"] = fused
        renames = {
            "input_layernorm.weight": "input_layernorm.weight",
            "self_attn.o_proj.weight": "self_attention.dense.weight",
            "post_attention_layernorm.weight": "post_attention_layernorm.weight",
            "mlp.gate_up_proj.weight": "mlp.dense_h_to_4h.weight",
            "mlp.down_proj.weight": "mlp.dense_4h_to_h.weight",
        }
        out.update({dst + new: state[src + old] for old, new in renames.items()})
    names = {"chatglm2": "THUDM/chatglm2-6b", "chatglm3": "THUDM/chatglm3-6b", "glm4": "THUDM/glm-4-9b-chat"}
    remote = {
        "_name_or_path": names[release],
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "num_layers": config["num_hidden_layers"],
        "hidden_size": config["hidden_size"],
        "num_attention_heads": config["num_attention_heads"],
        "kv_channels": config["head_dim"],
        "multi_query_attention": grouped,
        "multi_query_group_num": config["num_key_value_heads"],
        "ffn_hidden_size": config["intermediate_size"],
        "padded_vocab_size": config["vocab_size"],
        "seq_length": config["max_position_embeddings"],
        "layernorm_epsilon": config["rms_norm_eps"],
        "add_qkv_bias": True,
        "add_bias_linear": False,
        "rmsnorm": True,
        "post_layer_norm": True,
        "apply_residual_connection_post_layernorm": False,
        "eos_token_id": 1,
        "pad_token_id": 0,
        **({} if release == "chatglm2" else {"rope_ratio": theta / 10000.0}),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(remote, indent=2))
    save_file({k: v.contiguous() for k, v in out.items()}, str(folder / "model.safetensors"))
    return folder


def _remote_rmsnorm(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """modeling_chatglm.py's RMSNorm: normalise in fp32, multiply by the gain there, round once."""
    x = hidden_states.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    return (self.weight * x).to(hidden_states.dtype)


def _chatglm2_rotary(self: torch.nn.Module, x: torch.Tensor, position_ids: torch.Tensor) -> tuple:
    """ChatGLM2's RotaryEmbedding.forward_impl: theta, positions and their product in the model's dtype (the
    buffer's), then cos/sin in fp32 and back to that dtype."""
    dtype, dim = x.dtype, self.inv_freq.shape[0] * 2
    theta = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=dtype) / dim))
    table = torch.outer(torch.arange(int(position_ids.max()) + 1, dtype=dtype), theta).float()
    angles = table[position_ids]
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


@contextlib.contextmanager
def remote_numerics(model_type: str, chatglm2_rotary: bool = False) -> Iterator[None]:
    """Within: the transformers reference computes RMSNorm (and, for ChatGLM2, the rotary table) as the remote code."""
    module = __import__(f"transformers.models.{model_type}.modeling_{model_type}", fromlist=["x"])
    norm = getattr(module, f"{CLASSES[model_type][0][:-11]}RMSNorm")
    rotary = getattr(module, f"{CLASSES[model_type][0][:-11]}RotaryEmbedding")
    saved = norm.forward, rotary.forward
    norm.forward = _remote_rmsnorm
    if chatglm2_rotary:
        rotary.forward = _chatglm2_rotary
    try:
        yield
    finally:
        norm.forward, rotary.forward = saved
