"""The transformers side of the baseline, run as ``python -m glm_engine.bench.hf_worker JOB.json OUT.jsonl`` in the
baseline's interpreter (see :mod:`glm_engine.bench.baseline`).

It loads the folder with ``AutoModel.from_pretrained(..., trust_remote_code=True)`` once per dtype, wraps it in the
runner interface :mod:`glm_engine.bench.measure` times, and feeds it the workload our engine gets (explicit 2-D
positions and the bool mask, True = blocked, the reference's layouts; its own ``past_key_values`` as the cache).
Each point's record is appended to OUT as one JSON line as soon as it is measured.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from glm_engine.bench.measure import measure
from glm_engine.bench.spec import context_length, point_from_json
from glm_engine.bench.workload import build_workload
from glm_engine.model.registry import family_named

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class HFCache:
    """The reference's ``past_key_values`` and how many positions they hold; ``reset`` empties it between
    repetitions, as the timing protocol does with our caches."""

    def __init__(self) -> None:
        self.past: Any = None
        self.length = 0

    def reset(self) -> None:
        self.past, self.length = None, 0


class HFRunner:
    """A transformers ChatGLM model behind the runner interface of the timing protocol (eager, as it ships)."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model
        self.device = device

    def new_cache(self, batch_size: int, max_length: int) -> HFCache:
        return HFCache()

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        blocked: torch.Tensor,
        cache: HFCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=blocked,
            past_key_values=cache.past if cache is not None and cache.length else None,
            use_cache=cache is not None,
            return_dict=True,
        )
        if cache is not None:
            cache.past = out.past_key_values
            cache.length += input_ids.shape[1]
        return out.logits[:, -1:] if last_only else out.logits

    def step(
        self, cache: HFCache, input_ids: torch.Tensor, position_ids: torch.Tensor, blocked: torch.Tensor
    ) -> torch.Tensor:
        return self.forward(input_ids, position_ids, blocked, cache)


def _streamed_bytes(model: Any) -> int:
    """Bytes a decode step reads, counted as for our engine: every parameter once (a tied ``lm_head`` is the
    embedding, so once), minus an embedding table separate from ``lm_head``, of which a step reads one row."""
    total = sum(t.numel() * t.element_size() for t in model.parameters())  # parameters() lists tied ones once
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if embedding.data_ptr() != head.data_ptr():
        total -= embedding.numel() * embedding.element_size()
    return total


def _state_dict_without_metadata(folder: Path) -> dict[str, torch.Tensor] | None:
    """The weights of a single ``model.safetensors`` saved without ``{"format": "pt"}`` metadata, which
    transformers before 4.3x refuses to read itself (``metadata.get``); None when transformers can read the folder."""
    path = folder / "model.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    return load_file(str(path)) if not metadata or "format" not in metadata else None


def main(job_path: str, out_path: str) -> None:
    from transformers import AutoModel

    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    torch.set_num_threads(int(job["threads"]))
    device = torch.device(job["device"])
    points = [(point_from_json(p), p) for p in job["points"]]
    for dtype in dict.fromkeys(p.dtype for p, _ in points):
        mine = [(point, raw) for point, raw in points if point.dtype == dtype]
        try:
            if dtype not in DTYPES:
                raise ValueError(f"unknown dtype {dtype!r}; the baseline runs {', '.join(DTYPES)}")
            state_dict = _state_dict_without_metadata(Path(job["folder"]))
            model = AutoModel.from_pretrained(
                job["folder"], trust_remote_code=True, torch_dtype=DTYPES[dtype], state_dict=state_dict
            )
            del state_dict
            model = model.to(device=device, dtype=DTYPES[dtype]).eval()
        except Exception as exc:  # one dtype that cannot load fails its points only, with the reason
            for _, raw in mine:
                _append(out_path, {"point": raw, "error": f"transformers could not load {dtype}: {exc}"})
            continue
        runner = HFRunner(model, device)
        weight_bytes = _streamed_bytes(model)
        config = model.config  # the reference caches every layer's K and V over all heads, in the model's dtype
        kv_bytes_per_token = 2 * config.num_layers * config.hidden_size * DTYPES[dtype].itemsize
        spec = job["workload"]
        family = family_named(spec["family"])
        ours = family.config_from_dict(spec["config"], "the bench job")
        for point, raw in mine:
            total = point.tokens_needed()
            work = build_workload(
                family, ours, point.batch, context_length(point), total, int(spec["text_ids"]), int(job["seed"])
            )
            result = measure(runner, work, point, int(job["repetitions"]), int(job["warmup"]), lambda r=runner: r)
            record = {
                "point": raw,
                "samples": [asdict(s) for s in result.samples],
                "host_peak_bytes": result.host_peak_bytes,
                "device_peak_bytes": result.device_peak_bytes,
                "timer": result.timer,
                "weight_bytes": weight_bytes,
                "kv_bytes_per_token": kv_bytes_per_token,
            }
            _append(out_path, record)
        del model, runner


def _append(out_path: str, record: dict) -> None:
    with open(out_path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
