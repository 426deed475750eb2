"""The transformers side of the baseline, run as ``python -m glm_engine.bench.hf_worker JOB.json OUT.jsonl`` in the
baseline's interpreter (see :mod:`glm_engine.bench.baseline`), and its probe, ``python -m
glm_engine.bench.hf_worker --probe FOLDER remote|native``, which prints one JSON line: the versions, and the problem
when that transformers cannot resolve the folder's model class.

It loads the folder once per dtype (remote code: ``AutoModel.from_pretrained(..., trust_remote_code=True)``;
transformers' own class: ``AutoModelForCausalLM.from_pretrained``), wraps it in the runner interface
:mod:`glm_engine.bench.measure` times, and feeds it the workload our engine gets, with its own ``past_key_values``
as the cache. Masks follow the model's convention: ChatGLM-6B's reference takes our bool mask (True = blocked) and
2-D positions as they are; a causal workload (ChatGLM2 and later) is passed without a mask, which both the remote
code and transformers' classes read as causal attention over every cached token (the bench has no padding).
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
from glm_engine.bench.roofline import cached_bytes_per_token
from glm_engine.bench.spec import context_length, point_from_json
from glm_engine.bench.workload import Workload, build_workload
from glm_engine.model.registry import family_named

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_KEYWORD_SINCE = (4, 56)  # from_pretrained's ``torch_dtype`` is called ``dtype`` from transformers 4.56


class HFCache:
    """The reference's ``past_key_values`` and how many positions they hold; ``reset`` empties it between
    repetitions, as the timing protocol does with our caches."""

    def __init__(self) -> None:
        self.past: Any = None
        self.length = 0

    def reset(self) -> None:
        self.past, self.length = None, 0


class HFRunner:
    """A transformers model behind the runner interface of the timing protocol (as it ships: remote code eagerly,
    native classes with transformers' default attention). ``pass_mask`` False leaves the mask out (causal)."""

    def __init__(self, model: Any, device: torch.device, pass_mask: bool = True) -> None:
        self.model = model
        self.device = device
        self.pass_mask = pass_mask

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
            attention_mask=blocked if self.pass_mask else None,
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


def _output_weight(model: Any) -> torch.Tensor | None:
    """The output projection's weight: ``get_output_embeddings()``, or ChatGLM2-and-later remote code's
    ``transformer.output_layer``, which that code does not return from it."""
    head = model.get_output_embeddings()
    if head is None:
        head = getattr(getattr(model, "transformer", None), "output_layer", None)
    return None if head is None else head.weight


def _streamed_bytes(model: Any) -> int:
    """Bytes a decode step reads, counted as for our engine: every parameter once (a tied ``lm_head`` is the
    embedding, so once), minus an embedding table separate from the output projection, of which a step reads one
    row."""
    total = sum(t.numel() * t.element_size() for t in model.parameters())  # parameters() lists tied ones once
    embedding, head = model.get_input_embeddings().weight, _output_weight(model)
    if head is None or embedding.data_ptr() != head.data_ptr():
        total -= embedding.numel() * embedding.element_size()
    return total


def is_causal(work: Workload) -> bool:
    """Whether a workload is plain causal attention over 1-D positions (no prompt attended both ways, no 2-D
    positions): then the reference needs no mask from us."""
    if work.positions.dim() != 2:
        return False
    length = work.blocked.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool).triu(1)
    return bool((work.blocked == causal).all())


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


def _load(folder: str, remote_code: bool, dtype: torch.dtype, device: torch.device) -> Any:
    """The folder's model in ``dtype`` on ``device``, eval mode (see the module docstring for the class)."""
    import transformers

    if remote_code:
        loader, kwargs = transformers.AutoModel, {"trust_remote_code": True}
    else:
        loader, kwargs = transformers.AutoModelForCausalLM, {}
    state_dict = _state_dict_without_metadata(Path(folder))
    if state_dict is not None:
        kwargs["state_dict"] = state_dict
    dtype_key = "dtype" if _version(transformers.__version__) >= DTYPE_KEYWORD_SINCE else "torch_dtype"
    model = loader.from_pretrained(folder, **{dtype_key: dtype}, **kwargs)
    return model.to(device=device, dtype=dtype).eval()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def _kv_bytes_per_token(family: Any, config: Any, itemsize: int) -> int:
    """Keys and values the reference caches per token: the same heads as ours at TP=1 (a grouped-query model's
    groups), at the same head width."""
    kv_heads = family.parts(config).kv_heads or config.num_attention_heads
    return cached_bytes_per_token(config.num_layers, kv_heads, config.head_dim, itemsize)


def main(job_path: str, out_path: str) -> None:
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    torch.set_num_threads(int(job["threads"]))
    device = torch.device(job["device"])
    points = [(point_from_json(p), p) for p in job["points"]]
    spec = job["workload"]
    family = family_named(spec["family"])
    ours = family.config_from_dict(spec["config"], "the bench job")
    for dtype in dict.fromkeys(p.dtype for p, _ in points):
        mine = [(point, raw) for point, raw in points if point.dtype == dtype]
        try:
            if dtype not in DTYPES:
                raise ValueError(f"unknown dtype {dtype!r}; the baseline runs {', '.join(DTYPES)}")
            model = _load(job["folder"], bool(job.get("remote_code", True)), DTYPES[dtype], device)
        except Exception as exc:  # one dtype that cannot load fails its points only, with the reason
            for _, raw in mine:
                _append(out_path, {"point": raw, "error": f"transformers could not load {dtype}: {exc}"})
            continue
        weight_bytes = _streamed_bytes(model)
        kv_bytes_per_token = _kv_bytes_per_token(family, ours, DTYPES[dtype].itemsize)
        for point, raw in mine:
            total = point.tokens_needed()
            work = build_workload(
                family, ours, point.batch, context_length(point), total, int(spec["text_ids"]), int(job["seed"])
            )
            runner = HFRunner(model, device, pass_mask=not is_causal(work))
            result = measure(runner, work, point, int(job["repetitions"]), int(job["warmup"]), lambda r=runner: r)
            record = {
                "point": raw,
                "samples": [asdict(s) for s in result.samples],
                "host_peak_bytes": result.host_peak_bytes,
                "process_peak_bytes": result.process_peak_bytes,
                "device_peak_bytes": result.device_peak_bytes,
                "timer": result.timer,
                "weight_bytes": weight_bytes,
                "kv_bytes_per_token": kv_bytes_per_token,
            }
            _append(out_path, record)
        del model


PROBE_LAYER_KEYS = ("num_layers", "num_hidden_layers")  # remote code's and transformers' depth names


def probe(folder: str, remote_code: bool) -> dict[str, str]:
    """The versions of transformers and torch here, and ``problem`` when this transformers cannot read the folder's
    config, resolve its model class or build it: the class is built from the config cut to one layer on the meta
    device (remote code that places its own tensors gets untouched CPU memory), so no weights are read and a
    release whose model code breaks at construction (ChatGLM3's under transformers 5) is caught here."""
    import transformers

    answer = {"versions": f"transformers {transformers.__version__}, torch {torch.__version__}"}
    try:
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=remote_code)
        for key in PROBE_LAYER_KEYS:
            if isinstance(getattr(config, key, None), int):
                setattr(config, key, 1)
        with torch.device("meta"):
            if remote_code:
                from transformers.dynamic_module_utils import get_class_from_dynamic_module

                get_class_from_dynamic_module(config.auto_map["AutoModel"], folder)(config)
            else:
                transformers.AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # every failure is the answer: quoted in the skipped rows
        answer["problem"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return answer


def _append(out_path: str, record: dict) -> None:
    with open(out_path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "--probe":
        print(json.dumps(probe(sys.argv[2], sys.argv[3] == "remote")))
    else:
        main(*sys.argv[1:3])
