"""Host memory of one operation on a checkpoint (loading, converting, exporting), and the random checkpoints those
measurements run on.

Each operation runs in a fresh interpreter, so its peak is its own and not what an earlier one left behind. The
interpreter first runs the operation's imports, then resets its peak resident set (``device.MemoryTracker``, Linux
``VmHWM`` through ``/proc/self/clear_refs``) and notes its resident set as the *base*; the *peak* is then the base
plus what the operation holds at its worst, memory-mapped checkpoint pages it touched included. Decode speed is
``glm-engine bench``'s business; this module answers "how much RAM does loading (or converting, or exporting) this
checkpoint take", which a bench row cannot: its model is loaded before the timed repetitions start.

Random checkpoints are written one TP rank (SAT) or one file (native safetensors) at a time, in fp16 as released
checkpoints store them, with the built-in test tokenizer beside them, so loading and exporting them needs nothing else;
ChatGLM-6B-shaped Hugging Face folders (``write_random_chatglm_folder``) one file per layer, with ``lm_head`` stored
equal to the embedding as the release stores it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from glm_engine.checkpoint.layout import expected_layout
from glm_engine.checkpoint.native import write_native
from glm_engine.checkpoint.sat import LATEST_FILE_NAME, sat_shard_path, write_sat_shard
from glm_engine.errors import GlmEngineError, InputError
from glm_engine.model.chatglm.config import ChatGLMConfig
from glm_engine.model.chatglm.weights import EMBEDDING_KEY, LM_HEAD_KEY, parameter_shapes
from glm_engine.model.glm130b.config import CONFIG_FILE_NAME, GLMConfig
from glm_engine.tokenizer import BUILTIN_TOKENIZER_PATH, MODEL_FILENAME

from .baseline import worker_env
from .models import Shape, resolve_model

RANDOM_WEIGHT_STD = 0.02  # the spread of a trained GLM's weights; the values do not matter for memory
SAT_TAG = "1"  # the iteration folder ``latest`` names


@dataclass(frozen=True)
class Footprint:
    """One operation's wall time, its peak resident set and the resident set before it (after its imports)."""

    seconds: float
    peak_bytes: int | None
    base_bytes: int | None

    @property
    def added_bytes(self) -> int | None:
        """What the operation itself held at its peak, above the interpreter and its imports."""
        if self.peak_bytes is None or self.base_bytes is None:
            return None
        return self.peak_bytes - self.base_bytes


# The child interpreter: imports, reset the peak, run, report as one JSON line on stdout.
_CHILD = """
import json, sys, time
job = json.loads(sys.argv[1])
scope = dict(job["variables"])
exec(job["setup"], scope)
import torch
from glm_engine.bench.device import MemoryTracker, host_resident_bytes
tracker = MemoryTracker(torch.device("cpu"))
tracker.reset()
base = host_resident_bytes()
started = time.perf_counter()
exec(job["code"], scope)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_bytes": tracker.host_peak(), "base_bytes": base}))
"""


def measure_footprint(code: str, setup: str = "", variables: dict[str, str] | None = None) -> Footprint:
    """Run ``setup`` (imports: not counted in the peak's growth) then ``code`` in a fresh interpreter, with
    ``variables`` bound as strings, and return the time and peak host memory of ``code``."""
    job = json.dumps({"setup": setup, "code": code, "variables": variables or {}})
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, job], capture_output=True, text=True, env=worker_env(), check=False
    )
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise GlmEngineError(f"the measured operation failed (exit code {done.returncode}): {last}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Footprint(float(result["seconds"]), result["peak_bytes"], result["base_bytes"])


def random_config(model: str, shape: Shape) -> GLMConfig:
    """The config of a ``random:<preset>`` GLM-130B-family model shaped by ``shape`` (as ``glm-engine bench`` reads
    ``--model`` and ``--layers/--hidden/--heads/--inner``)."""
    source = resolve_model(model, shape)
    if not source.random or source.family.config_type is not GLMConfig:  # what the SAT/native writers take
        raise InputError(f"{model}: random checkpoints are written for random:<GLM preset> models (random:glm-130b)")
    return source.config


def _random_tensors(
    shapes: dict[str, tuple[int, ...]], generator: torch.Generator
) -> Iterator[tuple[str, torch.Tensor]]:
    for key, shape in shapes.items():
        yield key, (torch.randn(shape, generator=generator) * RANDOM_WEIGHT_STD).to(torch.float16)


def write_random_checkpoint(
    folder: str | Path,
    config: GLMConfig,
    tp: int = 1,
    layout: Literal["sat", "native"] = "sat",
    seed: int = 0,
    max_shard_bytes: int = 2**30,
) -> int:
    """Write random fp16 weights for ``config`` into the new ``folder``: the reference's SAT layout at ``tp`` ranks,
    or glm-engine's native safetensors in files of at most ``max_shard_bytes``; returns the weight bytes written."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise InputError(f"{folder} is not empty: random checkpoints are written into a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    if layout == "native":
        if tp != 1:
            raise InputError("the native layout holds the whole model (TP=1); shard it at load time instead")
        files = write_native(
            folder, config, _random_tensors(expected_layout(config, 1, None), generator), max_shard_bytes
        )
        written = sum(path.stat().st_size for path in files)
    else:
        (folder / SAT_TAG).mkdir()
        (folder / LATEST_FILE_NAME).write_text(SAT_TAG)
        config.to_json_file(folder / CONFIG_FILE_NAME)
        for rank in range(tp):
            shard = dict(_random_tensors(expected_layout(config, tp, None), generator))
            write_sat_shard(sat_shard_path(folder, SAT_TAG, rank), shard)
            del shard
        written = sum(path.stat().st_size for path in (folder / SAT_TAG).iterdir())
    shutil.copyfile(BUILTIN_TOKENIZER_PATH, folder / MODEL_FILENAME)
    return written


# ChatGLM-6B's released widths (THUDM/chatglm-6b config.json): hidden 4096, 32 heads, MLP 16384, vocab 130528.
CHATGLM_6B_WIDTHS = {"hidden_size": 4096, "num_attention_heads": 32, "inner_hidden_size": 16384, "vocab_size": 130528}


def write_random_chatglm_folder(
    folder: str | Path, num_layers: int, dtype: torch.dtype = torch.float16, seed: int = 0, **widths: int
) -> int:
    """Write a random ChatGLM-6B-shaped Hugging Face folder (``num_layers`` layers at the release's widths unless
    ``widths`` say otherwise) into the new ``folder``: ``config.json`` and safetensors files with an index, the
    embedding and an equal ``lm_head`` in the first file, one file per layer. Returns the weight bytes written."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise InputError(f"{folder} is not empty: random checkpoints are written into a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    config = ChatGLMConfig(num_layers=num_layers, **{**CHATGLM_6B_WIDTHS, **widths})
    (folder / "config.json").write_text(json.dumps(config.to_hf_dict()))
    generator = torch.Generator().manual_seed(seed)
    groups: dict[str, list[str]] = {}
    for key in parameter_shapes(config):
        group = f"layer{key.split('.')[2]}" if ".layers." in key else "embedding"
        groups.setdefault(group, []).append(key)
    weight_map: dict[str, str] = {}
    for number, keys in enumerate(groups.values(), start=1):
        name = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        shapes = parameter_shapes(config)
        tensors = {
            k: torch.randn(shapes[k], generator=generator, dtype=dtype) * RANDOM_WEIGHT_STD
            for k in keys
            if k != LM_HEAD_KEY
        }
        if LM_HEAD_KEY in keys:
            tensors[LM_HEAD_KEY] = tensors[EMBEDDING_KEY].clone()  # tied, stored twice as the release does
        save_file(tensors, str(folder / name))
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return sum((folder / name).stat().st_size for name in set(weight_map.values()))
