"""chatglm.cpp's side of ``--compare-chatglm-cpp``, run as ``python -m glm_engine.bench.ggml_worker JOB.json
OUT.jsonl`` in the interpreter that imports ``chatglm_cpp`` (see :mod:`glm_engine.bench.chatglm_cpp`), and its probe
``python -m glm_engine.bench.ggml_worker --probe`` (one JSON line: the version, or the import problem).

Per weight type of the job: the folder converted by chatglm.cpp's converter class into its model file (the folder's
tensors and config stand in for the ``AutoModel``/``AutoTokenizer`` objects its ``convert()`` would load), loaded by
``chatglm_cpp.Pipeline``, and each point timed by bench's protocol through :class:`GgmlRunner`. A record per point
is appended to OUT as soon as it is measured; a type that cannot convert or load fails its points with the message.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from glm_engine.bench.measure import measure
from glm_engine.bench.spec import context_length, point_from_json
from glm_engine.bench.workload import build_workload
from glm_engine.checkpoint.hf import open_hf_checkpoint
from glm_engine.model.registry import family_named

# Bytes per value of ggml's weight types (ggml-common.h): f16 2; q8_0 a block of 32 int8 with an fp16 scale (34 bytes);
# q4_0 a block of 32 4-bit values with an fp16 scale (18 bytes). The converter writes 1-D tensors in f32.
GGML_BYTES_PER_VALUE = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "f32": 4.0}
SEPARATE_OUTPUT_KEYS = ("transformer.output_layer.weight",)  # ChatGLM2 and later; ChatGLM-6B ties its embedding
TIED_EMBEDDING = ("transformer.word_embeddings.weight", "lm_head.weight")  # ChatGLM-6B's, as transformers ties it


class GgmlCache:
    """chatglm.cpp keeps its KV cache inside the model: this holds the ids it has seen and how many it has run."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.n_past = 0

    def reset(self) -> None:
        self.ids, self.n_past = [], 0


class GgmlRunner:
    """A chatglm.cpp model behind the runner interface ``glm_engine.bench.measure`` times: each forward appends its
    ids and runs ``generate_next_token`` over the new ones, as ``Pipeline`` drives generation (its greedy choice over
    the vocabulary is inside the timed call; positions and the mask come from ``n_past`` and the prompt length)."""

    device = torch.device("cpu")

    def __init__(self, model: Any, context: int, total: int) -> None:
        from chatglm_cpp import _C

        self.model = model
        self.context = context
        self.config = _C.GenerationConfig(
            max_length=total + 1, max_new_tokens=total - context, max_context_length=context, do_sample=False
        )
        self._with_image: bool | None = None  # 0.4.2 takes an image argument after the ids, 0.4.1 does not

    def new_cache(self, batch_size: int, max_length: int) -> GgmlCache:
        return GgmlCache()

    def _next(self, ids: list[int], n_past: int) -> int:
        if self._with_image is None:
            try:
                token = self.model.generate_next_token(ids, None, self.config, n_past, self.context)
                self._with_image = True
                return token
            except TypeError:
                self._with_image = False
        if self._with_image:
            return self.model.generate_next_token(ids, None, self.config, n_past, self.context)
        return self.model.generate_next_token(ids, self.config, n_past, self.context)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        blocked: torch.Tensor,
        cache: GgmlCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        if cache is None or input_ids.shape[0] != 1:
            raise ValueError("chatglm.cpp runs one sequence with its own cache")
        cache.ids.extend(int(i) for i in input_ids[0])
        token = self._next(cache.ids, cache.n_past)
        cache.n_past = len(cache.ids)
        return torch.tensor([[token]])

    def step(
        self, cache: GgmlCache, input_ids: torch.Tensor, position_ids: torch.Tensor, blocked: torch.Tensor
    ) -> torch.Tensor:
        return self.forward(input_ids, position_ids, blocked, cache)


def _tokenizer(path: Path) -> SimpleNamespace:
    """What each converter's ``dump_tokenizer`` reads, from the tokenizer file: SentencePiece's serialized proto (the
    file's bytes; ChatGLM-6B's and ChatGLM2/3's paths to it) or GLM-4's tiktoken file (its path)."""
    sp = SimpleNamespace(serialized_model_proto=path.read_bytes)
    return SimpleNamespace(
        tokenizer=SimpleNamespace(sp_model=sp),
        sp_tokenizer=SimpleNamespace(text_tokenizer=SimpleNamespace(sp=sp)),
        vocab_file=str(path),
    )


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder under its stored name (the ``state_dict()`` transformers would give, with
    ChatGLM-6B's tied ``lm_head`` added when the folder leaves it out)."""
    checkpoint = open_hf_checkpoint(folder)
    state = checkpoint.read(list(checkpoint.entries))
    embedding, head = TIED_EMBEDDING
    if embedding in state and head not in state:
        state[head] = state[embedding]
    return state


def convert(job: dict[str, Any], state: dict[str, torch.Tensor], ggml_type: str, out: Path) -> None:
    """Write chatglm.cpp's model file of ``ggml_type`` with its converter class (``job["converter"]``)."""
    from chatglm_cpp import convert as converter_module

    model = SimpleNamespace(config=SimpleNamespace(**job["config"]), state_dict=lambda: dict(state))
    converter = getattr(converter_module, job["converter"])
    with out.open("wb") as handle:
        converter.convert(
            handle, model, _tokenizer(Path(job["tokenizer_file"])), converter_module.GGMLType[ggml_type.upper()]
        )


def streamed_bytes(state: dict[str, torch.Tensor], ggml_type: str) -> int:
    """Bytes a decode step reads from the converted file, counted as for our engine: every 2-D weight in
    ``ggml_type``, 1-D ones in f32, minus the input embedding where the output layer is a separate tensor (a step
    reads one row of it); ChatGLM-6B's tied table counts once, as the output."""
    separate = any(key in state for key in SEPARATE_OUTPUT_KEYS)
    total = 0.0
    for name, tensor in state.items():
        if name.endswith("inv_freq") or name == TIED_EMBEDDING[1] or (separate and "word_embeddings" in name):
            continue
        total += tensor.numel() * GGML_BYTES_PER_VALUE[ggml_type if tensor.dim() == 2 else "f32"]
    return int(total)


def _measure_type(job: dict[str, Any], ggml_type: str, points: list[tuple[Any, dict]], out_path: str) -> None:
    """Convert, load and time every point of one weight type."""
    import chatglm_cpp

    family = family_named(job["workload"]["family"])
    config = family.config_from_dict(job["workload"]["config"], "the bench job")
    model_file = Path(job["workdir"]) / f"model-{ggml_type}.bin"
    try:
        state = read_state(Path(job["folder"]))
        start = time.perf_counter()
        convert(job, state, ggml_type, model_file)
        seconds = time.perf_counter() - start
        weight_bytes = streamed_bytes(state, ggml_type)
        del state
        longest = max(point.tokens_needed() for point, _ in points)
        pipeline = chatglm_cpp.Pipeline(str(model_file), max_length=longest + 1)
    except Exception as exc:  # one type that cannot convert or load fails its points only, with the reason
        for _, raw in points:
            _append(out_path, {"ggml_type": ggml_type, "point": raw, "error": f"chatglm.cpp {ggml_type}: {exc}"})
        return
    for point, raw in points:
        context, total = context_length(point), point.tokens_needed()
        text_ids = int(job["workload"]["text_ids"])
        work = build_workload(family, config, point.batch, context, total, text_ids, int(job["seed"]))
        runner = GgmlRunner(pipeline.model, context, total)
        result = measure(runner, work, point, int(job["repetitions"]), int(job["warmup"]), lambda r=runner: r)
        record = {
            "ggml_type": ggml_type,
            "point": raw,
            "samples": [asdict(s) for s in result.samples],
            "host_peak_bytes": result.host_peak_bytes,
            "process_peak_bytes": result.process_peak_bytes,
            "device_peak_bytes": None,
            "timer": result.timer,
            "weight_bytes": weight_bytes,
            "kv_bytes_per_token": int(job["kv_bytes_per_token"]),
            "convert_seconds": seconds,
            "model_file_bytes": model_file.stat().st_size,
        }
        _append(out_path, record)
    del pipeline
    model_file.unlink(missing_ok=True)


def main(job_path: str, out_path: str) -> None:
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    by_type: dict[str, list[tuple[Any, dict]]] = {}
    for entry in job["points"]:
        by_type.setdefault(entry["ggml_type"], []).append((point_from_json(entry["point"]), entry["point"]))
    for ggml_type, points in by_type.items():
        _measure_type(job, ggml_type, points, out_path)


def probe() -> dict[str, str]:
    """chatglm.cpp's version here, or the problem importing its package, compiled module or converter."""
    try:
        import chatglm_cpp
        from chatglm_cpp import _C, convert  # noqa: F401  (the compiled module and the converter must import)
    except Exception as exc:  # every failure is the answer: quoted in the skipped rows
        return {"problem": f"{type(exc).__name__}: {exc}"}
    where = os.path.dirname(chatglm_cpp.__file__)
    return {"version": f"chatglm.cpp {getattr(chatglm_cpp, '__version__', '?')} ({where})"}


def _append(out_path: str, record: dict) -> None:
    with open(out_path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "--probe":
        print(json.dumps(probe()))
    else:
        main(*sys.argv[1:3])
