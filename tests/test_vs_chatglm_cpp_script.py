"""``benchmarks/vs_chatglm_cpp.py`` (``glm_engine.bench.vs_chatglm_cpp``): its arguments and the errors a user meets
before anything is timed (no tokenizer, no chatglm.cpp), chatglm.cpp's thread rule and the library that sets it, and
one whole run in child processes against the fake ``chatglm_cpp`` package of ``test_bench_chatglm_cpp`` (which logs
what chatglm.cpp is handed). The real comparison runs only where ``GLM_ENGINE_CHATGLM_CPP_PYTHON`` names an
interpreter with chatglm.cpp built (docs/benchmarking.md#the-chatglmcpp-script). Nothing here is timed."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glm_engine.bench import vs_chatglm_cpp as script
from glm_engine.bench.vs_chatglm_cpp import BenchError, check_args, ggml_threads, main, nprocs_for, parser, thread_shim
from glm_engine.model.chatglm.config import chatglm_preset
from glm_engine.model.chatglm.weights import random_state_dict
from glm_engine.tokenizer import BUILTIN_TOKENIZER_PATH
from tests.test_bench_chatglm_cpp import FAKE_C, FAKE_CONVERT, FAKE_INIT

REAL_PYTHON = os.environ.get("GLM_ENGINE_CHATGLM_CPP_PYTHON")
COMPILER = shutil.which("cc") or shutil.which("gcc")


def _tiny_folder(folder: Path, tokenizer: bool = True) -> Path:
    """chatglm-tiny as a Hugging Face folder, laid out as the releases are (``lm_head`` equal to the embedding), with
    the MLP 4x the width as ChatGLM-6B's (chatglm.cpp's converter refuses any other ratio)."""
    from safetensors.torch import save_file

    tiny = chatglm_preset("chatglm-tiny")
    config = dataclasses.replace(tiny, inner_hidden_size=4 * tiny.hidden_size)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**config.to_hf_dict(), "architectures": ["ChatGLMModel"]}))
    weights = random_state_dict(config, seed=1, dtype=torch.float16)
    weights["lm_head.weight"] = weights["transformer.word_embeddings.weight"].clone()
    save_file(weights, str(folder / "model.safetensors"))
    if tokenizer:
        shutil.copy(BUILTIN_TOKENIZER_PATH, folder / "ice_text.model")
    return folder


@pytest.fixture
def fake_site(tmp_path, monkeypatch) -> Path:
    """The fake ``chatglm_cpp`` on PYTHONPATH (the script's children inherit it); its log is ``FAKE_GGML_LOG``."""
    package = tmp_path / "site" / "chatglm_cpp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_INIT)
    (package / "_C.py").write_text(FAKE_C)
    (package / "convert.py").write_text(FAKE_CONVERT)
    monkeypatch.setenv("FAKE_GGML_LOG", str(tmp_path / "ggml.log"))
    monkeypatch.setenv("FAKE_GGML_IMAGE_ARGUMENT", "1")  # 0.4.2's generate_next_token takes an image argument
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(package.parent), os.environ.get("PYTHONPATH")])))
    return package.parent


def _args(*argv: str):
    return parser().parse_args(list(argv))


def test_arguments_that_cannot_run_are_refused_with_what_to_change(tmp_path):
    folder = _tiny_folder(tmp_path / "hf")
    assert check_args(_args("--hf-dir", str(folder), "--widths", "8-bit, 4-bit")) == ["8-bit", "4-bit"]
    cases = [
        (["--widths", "3-bit"], "choose from 16-bit,8-bit,4-bit"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--threads", "17"], "chatglm.cpp decodes with at most 16"),
        (["--prompt", "1"], "[gMASK] <sop>"),
        (["--new-tokens", "0"], "--new-tokens must be at least 1"),
    ]
    for extra, message in cases:
        with pytest.raises(BenchError, match=re.escape(message)):
            check_args(_args("--hf-dir", str(folder), *extra))
    with pytest.raises(BenchError, match=r"has no config\.json"):
        check_args(_args("--hf-dir", str(tmp_path)))
    with pytest.raises(BenchError, match="--random-layers must be at least 1"):
        check_args(_args("--random-layers", "0"))
    with pytest.raises(SystemExit):  # a folder or random weights, not both
        _args("--hf-dir", str(folder), "--random-layers", "2")


def test_a_missing_tokenizer_is_one_line_that_names_the_option_not_a_traceback(tmp_path, capsys):
    folder = _tiny_folder(tmp_path / "hf", tokenizer=False)
    assert main(["--hf-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"no ChatGLM-6B tokenizer at {folder / 'ice_text.model'}" in err and "--tokenizer PATH/ice_text.model" in err
    assert "Traceback" not in err
    assert main(["--hf-dir", str(folder), "--tokenizer", str(tmp_path / "absent.model")]) == 2
    assert f"no ChatGLM-6B tokenizer at {tmp_path / 'absent.model'}" in capsys.readouterr().err


def test_a_tokenizer_given_apart_is_linked_beside_the_folders_files(tmp_path):
    folder = _tiny_folder(tmp_path / "hf", tokenizer=False)
    staged = script.staged_folder(folder, BUILTIN_TOKENIZER_PATH, tmp_path / "work")
    assert sorted(p.name for p in staged.iterdir()) == ["config.json", "ice_text.model", "model.safetensors"]
    assert (staged / "ice_text.model").resolve() == BUILTIN_TOKENIZER_PATH.resolve()
    own = _tiny_folder(tmp_path / "own")
    assert script.staged_folder(own, own / "ice_text.model", tmp_path / "work2") == own  # nothing to stage


def test_without_chatglm_cpp_the_error_quotes_the_import_and_the_install_line(tmp_path, capsys):
    done = subprocess.run([sys.executable, "-c", "import chatglm_cpp"], capture_output=True, env=os.environ.copy())
    if done.returncode == 0:
        pytest.skip("chatglm_cpp imports in this interpreter, so nothing is missing")
    assert main(["--hf-dir", str(_tiny_folder(tmp_path / "hf"))]) == 2
    err = capsys.readouterr().err
    assert "cannot import chatglm.cpp (ModuleNotFoundError: No module named 'chatglm_cpp')" in err
    assert "--chatglm-cpp-python" in err and "--compare-chatglm-cpp" not in err
    assert "torch==2.13.0" in err and "chatglm-cpp==0.4.2" in err and "Traceback" not in err


def test_a_folder_the_loader_refuses_is_one_line_too(tmp_path, fake_site, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "nonsense"}))
    shutil.copy(BUILTIN_TOKENIZER_PATH, folder / "ice_text.model")
    assert main(["--hf-dir", str(folder), "--bandwidth-gib", "0"]) == 2
    err = capsys.readouterr().err
    assert f"vs_chatglm_cpp.py: error: {folder} is not a checkpoint" in err and "Traceback" not in err


def test_chatglm_cpp_thread_rule_and_the_cpu_count_that_gives_each_thread_count():
    # chatglm.cpp 0.4.2's get_num_physical_cores: every hardware thread up to 4, half above; decode at most 16
    assert [ggml_threads(n) for n in (1, 2, 4, 6, 8, 64)] == [1, 2, 4, 3, 4, 16]
    assert [ggml_threads(nprocs_for(t)) for t in range(1, 17)] == list(range(1, 17))


@pytest.mark.skipif(COMPILER is None, reason="no C compiler to build the get_nprocs library")
def test_the_thread_library_makes_get_nprocs_answer_the_count_for_the_threads_asked(tmp_path):
    online = os.cpu_count() or 1
    assert thread_shim(ggml_threads(online), tmp_path) == {}  # the machine's own count already gives it
    wanted = 3 if ggml_threads(online) != 3 else 5
    env = {**os.environ, **thread_shim(wanted, tmp_path)}
    code = "import ctypes; print(ctypes.CDLL(None).get_nprocs())"
    seen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert ggml_threads(int(seen.stdout)) == wanted


def _ggml_calls(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "ggml.log").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.skipif(COMPILER is None, reason="no C compiler to build the get_nprocs library")
def test_a_whole_run_in_child_processes_keeps_the_prompt_length_as_chatglm_cpps_n_ctx(tmp_path, fake_site, capsys):
    folder = _tiny_folder(tmp_path / "hf")
    threads = 3 if ggml_threads(os.cpu_count() or 1) != 3 else 1  # not the machine's count: the library sets it
    argv = ["--hf-dir", str(folder), "--widths", "8-bit", "--prompt", "3", "--new-tokens", "2", "--repetitions", "1"]
    argv += ["--warmup", "0", "--bandwidth-gib", "0", "--threads", str(threads), "--workdir", str(tmp_path / "w")]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "CPU: " in out and "flags: " in out and "chatglm.cpp 0.0-fake" in out and "LD_PRELOAD" in out
    rows = {line.split(" | ")[1]: line.split(" | ") for line in out.splitlines() if line.startswith("| 8-bit |")}
    assert list(rows) == ["chatglm.cpp q8_0", "glm-engine int8 rowwise", "glm-engine int8 rowwise + lm_head"]
    assert rows["chatglm.cpp q8_0"][3] == "1.00x" and f"{threads} threads |" in rows["chatglm.cpp q8_0"][-1] + " |"
    for cells in rows.values():
        assert float(cells[2]) > 0 and float(cells[4]) > 0 and float(cells[7]) > 0  # tok/s, GB/token, peak RSS
    log = _ggml_calls(tmp_path)
    assert [e["load"]["type"] for e in log if "load" in e] == ["Q8_0"]
    calls = [e for e in log if "call" in e]
    # the prompt in one call, then one call per generated token: n_past grows, n_ctx stays the prompt's length
    assert [(len(e["ids"]), e["n_past"], e["n_ctx"]) for e in calls] == [(3, 0, 3), (4, 3, 3), (5, 4, 3)]
    assert not (tmp_path / "w").exists() or list((tmp_path / "w").iterdir()) == []  # model files removed


@pytest.mark.skipif(
    not REAL_PYTHON, reason="set GLM_ENGINE_CHATGLM_CPP_PYTHON to an interpreter with chatglm.cpp 0.4.2 built in"
)
def test_the_real_chatglm_cpp_runs_every_width_beside_ours(tmp_path, capsys):
    folder = _tiny_folder(tmp_path / "hf")
    argv = ["--hf-dir", str(folder), "--prompt", "4", "--new-tokens", "3", "--repetitions", "1", "--warmup", "0"]
    assert main([*argv, "--bandwidth-gib", "0", "--chatglm-cpp-python", str(REAL_PYTHON)]) == 0
    out = capsys.readouterr().out
    for width, ggml_type in (("16-bit", "f16"), ("8-bit", "q8_0"), ("4-bit", "q4_0")):
        (line,) = [x for x in out.splitlines() if x.startswith(f"| {width} | chatglm.cpp {ggml_type} |")]
        assert float(line.split(" | ")[2]) > 0 and "failed" not in line
