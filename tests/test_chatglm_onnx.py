"""ChatGLM-6B's graph in ONNX (2-D positions, split rotary, tanh GeLU, separate lm_head) against ChatGLMModel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'glm-engine[onnx]')")

from glm_engine.backends.registry import get_backend, op_table_for  # noqa: E402
from glm_engine.export.chatglm_onnx import export_chatglm  # noqa: E402
from glm_engine.export.onnx_export import MODEL_FILE  # noqa: E402
from glm_engine.export.verify import nmse  # noqa: E402
from glm_engine.generation.masks import generation_blocked  # noqa: E402
from glm_engine.model.chatglm import ChatGLMModel  # noqa: E402
from glm_engine.model.chatglm_config import chatglm_preset  # noqa: E402
from glm_engine.model.chatglm_weights import ChatGLMWeights, random_state_dict  # noqa: E402


def test_chatglm_export_matches_the_model_over_prefill_and_cached_steps(tmp_path):
    config = chatglm_preset("chatglm-tiny")
    state = random_state_dict(config, 0)
    model = ChatGLMModel(
        config,
        ChatGLMWeights.from_state_dict(state, config, torch.float32),
        op_table_for(get_backend("cpu"), torch.float32),
    )
    export_chatglm(state, config, tmp_path / "chatglm", max_seq=64)
    session = ort.InferenceSession(str(tmp_path / "chatglm" / MODEL_FILE), providers=["CPUExecutionProvider"])
    b, context, total = 2, 6, 9
    ids = torch.randint(5, 3999, (b, total))
    ids[:, context - 2], ids[:, context - 1] = config.gmask_token_id, config.bos_token_id
    positions = torch.stack(
        (torch.arange(total).clamp(max=context - 2), (torch.arange(total) - context + 2).clamp(min=0))
    )
    positions = positions.expand(b, 2, total).contiguous()
    blocked = generation_blocked(context, total)[None, None].expand(b, 1, total, total)
    heads, d = config.num_attention_heads, config.head_dim
    past = [np.zeros((b, heads, 0, d), np.float32)] * (2 * config.num_layers)
    cache = model.new_cache(b, total)
    for start, stop in ((0, context), *((c, c + 1) for c in range(context, total))):
        feeds = {
            "input_ids": ids[:, start:stop].numpy(),
            "position_ids": positions[..., start:stop].numpy(),
            "attention_mask": blocked[:, :, start:stop, :stop].contiguous().numpy(),
            "logits_to_keep": np.arange(stop - start),
        }
        feeds.update({f"past_key_values.{i // 2}.{('key', 'value')[i % 2]}": p for i, p in enumerate(past)})
        logits, *past = session.run(None, feeds)
        with torch.inference_mode():
            want = model.forward(
                ids[:, start:stop], positions[..., start:stop], blocked[:, :, start:stop, :stop], cache
            )
        assert nmse(torch.from_numpy(logits), want) < 1e-9
        assert torch.equal(torch.from_numpy(logits[:, -1]).argmax(-1), want[:, -1].argmax(-1))
