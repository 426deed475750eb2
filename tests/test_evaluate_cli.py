"""``glm-engine evaluate`` end to end on the demo model with the shipped example tasks."""

import json

import pytest
from typer.testing import CliRunner

from glm_engine.cli.main import app
from glm_engine.evaluation.config import EXAMPLE_TASKS_DIR

runner = CliRunner()
EXAMPLE_NAMES = {
    "demo-cloze",
    "demo-cloze-gmask",
    "demo-generation",
    "demo-generation-beam",
    "demo-lambada",
    "demo-lm",
    "demo-pile",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "report.json"
    result = runner.invoke(app, ["evaluate", "--backend", "cpu", "--output", "json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_every_example_task_runs_and_reports_its_metrics(report):
    tasks = {t["name"]: t for t in report["tasks"]}
    assert set(tasks) == EXAMPLE_NAMES
    assert report["model"] == "the built-in demo model"
    assert tasks["demo-cloze"]["metrics"] == ["Accuracy", "F1_mul"]
    assert tasks["demo-generation"]["metrics"] == ["EM", "F1"]
    assert tasks["demo-lambada"]["metrics"] == ["Accuracy"]
    assert tasks["demo-pile"]["metrics"] == ["BPB"]
    for task in report["tasks"]:
        for row in task["files"]:
            for name, value in row["metrics"].items():
                low, high = (0.0, 100.0) if name not in ("PPL", "BPB") else (0.0, float("inf"))
                assert low <= value <= high, (task["name"], row, name)


def test_groups_and_overall_are_example_weighted(report):
    cloze = next(t for t in report["tasks"] if t["name"] == "demo-cloze")
    english = [r for r in cloze["files"] if r["group"] == "english"]
    assert {r["file"] for r in english} == {"en/questions.jsonl", "en/sayings.jsonl"}
    weighted = sum(r["metrics"]["Accuracy"] * r["examples"] for r in english) / sum(r["examples"] for r in english)
    assert cloze["groups"]["english"]["average"]["Accuracy"] == pytest.approx(weighted)
    assert cloze["groups"]["english"]["max"]["Accuracy"] == max(r["metrics"]["Accuracy"] for r in english)
    assert cloze["overall"]["examples"] == sum(r["examples"] for r in cloze["files"]) == 19
    # the trained demo model gets most of these proverbs and poem lines right (3 choices at most: chance < 50%)
    assert cloze["overall"]["average"]["Accuracy"] > 50.0


def test_pile_rows_are_per_set_name_and_lm_scores_are_finite(report):
    pile = next(t for t in report["tasks"] if t["name"] == "demo-pile")
    assert [(r["file"], r["subset"], r["examples"]) for r in pile["files"]] == [
        ("pile_like.jsonl", "Fortunes", 3),
        ("pile_like.jsonl", "Poems", 2),
    ]
    lm = next(t for t in report["tasks"] if t["name"] == "demo-lm")
    (row,) = lm["files"]
    assert 0.5 < row["metrics"]["BPB"] < 8.0 and row["metrics"]["PPL"] > 1.0


def test_table_output_names_tasks_files_and_statistics(tmp_path):
    out = tmp_path / "report.txt"
    task = EXAMPLE_TASKS_DIR / "mul" / "cloze.yaml"
    result = runner.invoke(app, ["evaluate", str(task), "--backend", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for text in ("demo-cloze", "en/sayings.jsonl", "zh/poems.jsonl", "english", "chinese", "overall", "median"):
        assert text in result.output
        assert text in out.read_text()


def test_user_errors_exit_1_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntype: mul\npath: .\nbatch_size: 4\n")
    result = runner.invoke(app, ["evaluate", str(bad)])
    assert result.exit_code == 1
    assert "unknown key 'batch_size'" in result.output and "Traceback" not in result.output
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.jsonl").write_text('{"inputs_pretokenized": "a", "label": 0}\n')
    good = tmp_path / "good.yaml"
    good.write_text("name: x\ntype: mul\npath: data\n")
    result = runner.invoke(app, ["evaluate", "--task", str(good), "--backend", "cpu"])
    assert result.exit_code == 1
    assert "x.jsonl:1: need 'choices_pretokenized'" in result.output


def test_empty_pile_documents_are_skipped_with_a_note(tmp_path):
    (tmp_path / "data").mkdir()
    lines = [
        {"text": [], "text_pretokenized": "", "meta": {"pile_set_name": "Pile-CC"}},
        {"text_pretokenized": "All programmers are optimists.", "meta": {"pile_set_name": "Pile-CC"}},
    ]
    (tmp_path / "data" / "test_tokenized.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    task = tmp_path / "pile.yaml"
    task.write_text("name: p\ntype: lm\npath: data\nmodule: tasks.language-modeling.pile.Pile\nuse_task_mask: true\n")
    result = runner.invoke(app, ["evaluate", str(task), "--backend", "cpu", "--output", "json"])
    assert result.exit_code == 0, result.output
    assert "test_tokenized.jsonl: skipped 1 empty document(s) (line 1)" in result.output
