"""ChatGLM-6B (v1) as the same ONNX decoder graph: what differs from GLM-130B, as ``model/chatglm.py`` has it.

``position_ids`` are ``[batch, 2, seq]`` (positions, then block positions); each head's query and key are split in two
halves rotated by one row each with ChatGLM's own table (``chatglm_rotary_table``); the MLP is tanh-GeLU, not GeGLU;
biases are fused (``nn.Linear``, the same Add in a graph); ``alpha`` is ``sqrt(2 * 28)``; ``lm_head`` is its own matrix.
The I/O names, the mask and the KV-cache layout are GLM-130B's.

Status: the graph and an in-memory export (:func:`export_chatglm`) are checked against ``ChatGLMModel``; exporting
from a Hugging Face folder and running ChatGLM exports through ``--backend onnxruntime`` are not wired up yet.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

import torch

from glm_engine.backends.base import dtype_name
from glm_engine.checkpoint.atomic import staged_folder
from glm_engine.export.glm_onnx import BATCH, OPSET, SEQ, GLMGraph, QuantEmit
from glm_engine.export.onnx_builder import GraphBuilder
from glm_engine.export.onnx_export import DATA_FILE, GENAI_CONFIG_FILE, MODEL_FILE
from glm_engine.model.chatglm_config import ROTARY_BASE, ChatGLMConfig
from glm_engine.model.chatglm_weights import LM_HEAD_KEY
from glm_engine.model.rotary import chatglm_rotary_table
from glm_engine.model.weights import EMBEDDING_KEY, FINAL_LN_KEYS, LayerWeights, layer_key
from glm_engine.ops.torch_ops import GELU_TANH_CUBIC, GELU_TANH_SCALE


class ChatGLMGraph(GLMGraph):
    """GLMGraph with ChatGLM-6B's positions, rotary, MLP and biases."""

    def position_shape(self) -> list[int | str]:
        return [BATCH, 2, SEQ]

    def rotary_tables(self, max_seq: int) -> tuple[torch.Tensor, torch.Tensor]:
        return chatglm_rotary_table(self.config.rotary_dim, max_seq, self.dtype, "cpu", ROTARY_BASE)

    def rotations(self, position_ids: str) -> list[tuple[str, str]]:
        g, out = self.g, []
        axes = g.const([2], torch.int64, "axis2")
        for row in (0, 1):  # position ids, then block position ids
            ids = g.node("Gather", [position_ids, g.const(row, torch.int64, "row")], axis=1)  # [b, s]
            cos = g.node("Unsqueeze", [g.node("Gather", [self.cos_table, ids], axis=0), axes])
            sin = g.node("Unsqueeze", [g.node("Gather", [self.sin_table, ids], axis=0), axes])
            out.append((cos, sin))
        return out

    def rotary(self, q: str, k: str, rotations: list[tuple[str, str]]) -> tuple[str, str]:
        g = self.g
        q_halves = g.node("Split", [q], outputs=2, axis=-1, num_outputs=2)
        k_halves = g.node("Split", [k], outputs=2, axis=-1, num_outputs=2)
        q_out = [self.rotate(half, cos, sin) for half, (cos, sin) in zip(q_halves, rotations)]
        k_out = [self.rotate(half, cos, sin) for half, (cos, sin) in zip(k_halves, rotations)]
        return g.node("Concat", q_out, axis=-1), g.node("Concat", k_out, axis=-1)

    def activation(self, x: str) -> str:
        """``0.5 * x * (1 + tanh(0.79788... * x * (1 + 0.044715 * x * x)))`` in TorchOps.gelu's order."""
        g, dt = self.g, self.dtype
        cubic = g.node("Add", [self.one, g.node("Mul", [g.node("Mul", [g.const(GELU_TANH_CUBIC, dt), x]), x])])
        inner = g.node("Mul", [g.node("Mul", [g.const(GELU_TANH_SCALE, dt), x]), cubic])
        return g.node("Mul", [g.node("Mul", [self.half, x]), g.node("Add", [self.one, g.node("Tanh", [inner])])])

    def row_parallel(self, x: str, name: str, weight: torch.Tensor, bias: torch.Tensor) -> str:
        return self.linear(x, name, weight, bias)


def export_chatglm(
    state_dict: Mapping[str, torch.Tensor],
    config: ChatGLMConfig,
    output: str | Path,
    dtype: torch.dtype = torch.float32,
    max_seq: int | None = None,
) -> Path:
    """Write a ChatGLM state dict (Hugging Face key names) as ``model.onnx`` + data + a short genai_config."""
    max_seq = max_seq or config.max_sequence_length
    with staged_folder(output) as staging:
        g = GraphBuilder(staging / DATA_FILE, OPSET)
        graph = ChatGLMGraph(g, config, dtype, max_seq, QuantEmit())
        x = graph.embed(state_dict[EMBEDDING_KEY])
        for n in range(config.num_layers):
            layer = LayerWeights(**{f.name: state_dict[layer_key(n, f.name)] for f in fields(LayerWeights)})
            x = graph.layer(n, layer, x)
        head = state_dict[LM_HEAD_KEY]
        graph.head(
            x, state_dict[FINAL_LN_KEYS[0]], state_dict[FINAL_LN_KEYS[1]], lambda h: graph.matmul(h, "lm_head", head)
        )
        description = {
            "model": {"type": "chatglm", "config": config.to_hf_dict(), "context_length": max_seq},
            "decoder": {"filename": MODEL_FILE, "opset": OPSET, "dtype": dtype_name(dtype)},
        }
        g.finish(staging / MODEL_FILE, "chatglm", "glm-engine", {})
        (staging / GENAI_CONFIG_FILE).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return Path(output)
