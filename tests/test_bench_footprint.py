"""``glm_engine.bench.footprint``: random checkpoints the memory measurements run on, and one operation's peak host
memory in a fresh interpreter."""

from __future__ import annotations

from pathlib import Path

import pytest

from glm_engine.bench.footprint import measure_footprint, random_config, write_random_checkpoint
from glm_engine.bench.models import Shape
from glm_engine.checkpoint import open_checkpoint
from glm_engine.errors import GlmEngineError, InputError
from glm_engine.tokenizer import MODEL_FILENAME

MIB = 2**20
PEAK_IS_RESETTABLE = Path("/proc/self/clear_refs").exists()


@pytest.mark.parametrize(("layout", "tp"), [("sat", 2), ("native", 1)])
def test_a_random_checkpoint_opens_as_the_model_it_was_written_for(tmp_path, layout, tp):
    config = random_config("random:glm-tiny", Shape(layers=2))
    written = write_random_checkpoint(tmp_path / "ckpt", config, tp=tp, layout=layout)
    checkpoint = open_checkpoint(tmp_path / "ckpt")  # validates every key and shape against the config
    assert checkpoint.config == config and checkpoint.bits is None
    assert written >= 2 * config.num_parameters()  # fp16, plus the files' own headers
    assert (tmp_path / "ckpt" / MODEL_FILENAME).is_file()  # loading and exporting need no tokenizer argument


def test_random_checkpoints_are_for_random_glm_models_and_new_folders(tmp_path):
    with pytest.raises(InputError, match="random:<GLM preset>"):
        random_config("random:chatglm-tiny", Shape())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        write_random_checkpoint(tmp_path / "full", random_config("random:glm-tiny", Shape(layers=1)))


@pytest.mark.skipif(not PEAK_IS_RESETTABLE, reason="the peak of one operation needs Linux's /proc/self/clear_refs")
def test_the_footprint_is_what_the_operation_holds_above_its_imports():
    holds = measure_footprint("x = torch.ones(32 * 2**20)  # 128 MiB, written", "import torch")
    idle = measure_footprint("pass", "import torch")
    assert 120 * MIB <= holds.added_bytes <= 200 * MIB
    assert idle.added_bytes < 16 * MIB
    assert holds.peak_bytes == holds.base_bytes + holds.added_bytes and holds.base_bytes > 50 * MIB  # torch itself


def test_a_failing_operation_says_why():
    with pytest.raises(GlmEngineError, match="ZeroDivisionError"):
        measure_footprint("1 / 0")
