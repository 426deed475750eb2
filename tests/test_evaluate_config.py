"""Task YAMLs, data files and task modules: what is accepted and the errors for what is not."""

import json
from pathlib import Path

import pytest

from glm_engine.errors import TaskError
from glm_engine.evaluation.config import (
    EXAMPLE_TASKS_DIR,
    TaskType,
    find_task_files,
    load_task_file,
    parse_task_config,
)
from glm_engine.evaluation.datasets import (
    DataWarning,
    read_generation,
    read_multiple_choice,
    read_pile,
    read_raw_document,
)
from glm_engine.evaluation.lambada import LambadaTask
from glm_engine.evaluation.registry import resolve_task
from glm_engine.evaluation.runner import prepare
from glm_engine.evaluation.tasks import EvaluationTask, MultipleChoiceTask, PileTask
from glm_engine.tokenizer import builtin_tokenizer


class CountingTask(EvaluationTask):
    """A user's task: predicts label 0 for every line (importable as test_evaluate_config.CountingTask)."""

    task_type = TaskType.MULTIPLE_CHOICE

    def load_examples(self, path, engine):
        return []

    def predict(self, engine, examples, progress):
        return [0 for _ in examples]


def test_dashed_and_underscored_keys_give_the_same_config():
    dashed = parse_task_config(
        {"name": "x", "type": "gen", "path": "p", "max-gen-length": 5, "use-task-mask": True, "num-beams": 16}
    )
    underscored = parse_task_config(
        {"name": "x", "type": "gen", "path": "p", "max_gen_length": 5, "use_task_mask": True, "num_beams": 16}
    )
    assert dashed == underscored
    assert dashed.max_gen_length == 5 and dashed.num_beams == 16 and dashed.use_task_mask
    assert dashed.length_penalty == 1.0 and dashed.no_repeat_ngram_size == 3 and dashed.max_seq_length == 2048


def test_defaults_and_groups_follow_the_reference():
    plain = parse_task_config({"name": "x", "type": "mul", "path": "p"})
    assert plain.groups == {"all": "**/*.json*"} and plain.micro_batch_size == 1 and plain.metrics == ()
    grouped = parse_task_config({"name": "x", "type": "mul", "path": "p", "file-pattern": {"stem": "stem/*.json"}})
    assert grouped.groups == {"stem": "stem/*.json"}
    assert MultipleChoiceTask(plain).metric_names == ("Accuracy",)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "type": "mul", "path": "p", "batch-size": 2}, "unknown key 'batch-size'"),
        ({"name": "x", "type": "mul", "path": "p", "max_gen_length": 2}, "'max_gen_length' belongs to gen tasks"),
        ({"name": "x", "type": "gen", "path": "p", "generation-length": 2}, "belongs to lm tasks"),
        ({"name": "x", "type": "mul", "path": "p", "unidirectional": True}, "unidirectional needs use_task_mask"),
        ({"name": "x", "type": "seq2seq", "path": "p"}, "type must be one of mul, gen, lm"),
        ({"name": "x", "type": "mul"}, "missing required key"),
        ({"name": "x", "type": "mul", "path": "p", "micro-batch-size": "4"}, "'micro-batch-size' must be int"),
        ({"name": "x", "type": "mul", "path": "p", "use_task_mask": 1}, "'use_task_mask' must be bool"),
        ({"name": "x", "type": "mul", "path": "p", "micro_batch_size": 0}, "micro_batch_size must be at least 1"),
        ({"name": "x", "type": "mul", "path": "p", "max-seq-length": 1, "max_seq_length": 1}, "given twice"),
        ({"name": "x", "type": "gen", "path": "p", "sampling_strategy": "Nucleus"}, "sampling_strategy must be"),
        ({"name": "x", "type": "lm", "path": "p", "generation_length": 2047}, "generation_length 2047 must be below"),
        (["name", "x"], "must be a mapping"),
    ],
)
def test_bad_configs_are_task_errors_naming_the_problem(data, message):
    with pytest.raises(TaskError, match=message):
        parse_task_config(data, "task.yaml")


def test_yaml_files_and_folders_on_the_command_line(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.yaml").write_text("name: one\ntype: mul\npath: .\n")
    (tmp_path / "a" / "deep").mkdir()
    (tmp_path / "a" / "deep" / "two.yaml").write_text("name: two\ntype: lm\npath: .\n")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    found = find_task_files([tmp_path / "a"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/deep/two.yaml", "a/one.yaml"]  # sorted paths
    assert load_task_file(found[0]).source == found[0]
    with pytest.raises(TaskError, match="not valid YAML"):
        load_task_file(tmp_path / "bad.yaml")
    with pytest.raises(TaskError, match="no such file or folder"):
        find_task_files([tmp_path / "missing.yaml"])
    assert find_task_files([]) == find_task_files(["examples"]) == sorted(EXAMPLE_TASKS_DIR.rglob("*.yaml"))


def test_reference_module_names_map_to_built_in_tasks():
    def resolved(module, task_type="mul"):
        return resolve_task(parse_task_config({"name": "x", "type": task_type, "path": ".", "module": module}))

    assert type(resolved("tasks.mmlu.task.MMLU")) is MultipleChoiceTask
    assert type(resolved("tasks.language-modeling.pile.Pile", "lm")) is PileTask
    assert type(resolved("tasks.lambada.task.LAMBADA", "gen")) is LambadaTask
    assert type(resolved("test_evaluate_config.CountingTask")) is CountingTask
    with pytest.raises(TaskError, match=r"reference's task module tasks\.ethnic\.crows_pair\.CrowsPair has no"):
        resolved("tasks.ethnic.crows_pair.CrowsPair")
    with pytest.raises(TaskError, match="is a gen task, but type is mul"):
        resolved("tasks.lambada.task.LAMBADA")
    with pytest.raises(TaskError, match="must name a subclass"):
        resolved("json.JSONDecoder")
    with pytest.raises(TaskError, match="cannot import module 'no_such_package'"):
        resolved("no_such_package.Task")


@pytest.fixture(scope="module")
def tok():
    return builtin_tokenizer()


def write(path: Path, *lines) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_ids_take_precedence_over_pretokenized_text(tmp_path, tok):
    data = write(
        tmp_path / "d.jsonl",
        {"inputs": [30, 31], "inputs_pretokenized": "ignored", "choices": [[40], [41, 42]], "label": 1},
        "",
        {"inputs_pretokenized": "the sky is [MASK]", "choices_pretokenized": ["blue", "green"], "label": 0},
    )
    first, second = read_multiple_choice(data, tok, 150528)
    assert first.text == [30, 31] and first.choices == [[40], [41, 42]] and first.label == 1
    assert tok.layout.mask in second.text and second.choices[0] == tok.encode("blue")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "d.jsonl:2: not valid JSON"),
        ('{"inputs_pretokenized": "x", "choices_pretokenized": ["a", "b"], "label": 2}', "d.jsonl:2: 'label'"),
        ('{"inputs_pretokenized": "x", "label": 0}', "d.jsonl:2: need 'choices_pretokenized'"),
        ('{"choices_pretokenized": ["a"], "label": 0}', "d.jsonl:2: missing 'inputs_pretokenized'"),
        ('{"inputs": [1, "2"], "choices": [[3]], "label": 0}', "d.jsonl:2: 'inputs' must be a list of token ids"),
        ('{"inputs": [999999], "choices": [[3]], "label": 0}', "outside the model's vocabulary"),
        ('{"inputs_pretokenized": "x", "choices_pretokenized": ["a", ""], "label": 0}', "choices entry 1 is empty"),
        ("[1, 2]", "d.jsonl:2: each line must be a JSON object"),
    ],
)
def test_bad_jsonl_lines_name_file_and_line(tmp_path, tok, line, message):
    data = write(tmp_path / "d.jsonl", {"inputs_pretokenized": "ok", "choices_pretokenized": ["a"], "label": 0}, line)
    with pytest.raises(TaskError, match=message):
        read_multiple_choice(data, tok, 150528)


def test_generation_targets_and_lm_documents(tmp_path, tok):
    data = write(tmp_path / "g.jsonl", {"inputs_pretokenized": "hello", "targets_pretokenized": ["world", "earth"]})
    (example,) = read_generation(data, tok, 150528)
    assert example.targets == [tok.encode("world"), tok.encode("earth")] and example.target_texts == ["world", "earth"]
    raw = tmp_path / "wiki.txt"
    raw.write_text(" = Title = \n a  b c\n", encoding="utf-8")
    document = read_raw_document(raw, tok)
    # the reference splits on single spaces: "\n" and the empty piece between two spaces count (8, not 6 words)
    assert document.num_words == 8
    assert document.num_bytes == len(b" = Title = \n a  b c\n")
    pile = write(
        tmp_path / "p.jsonl",
        {"text_pretokenized": "héllo", "meta": {"pile_set_name": "Wiki"}},
        {"text": [30, 31], "text_pretokenized": "ab", "meta": {"pile_set_name": "ArXiv"}},
    )
    docs = read_pile(pile, tok, 150528)
    assert [d.subset for d in docs] == ["Wiki", "ArXiv"] and docs[0].num_bytes == 6 and docs[1].tokens == [30, 31]
    assert PileTask(parse_task_config({"name": "p", "type": "lm", "path": "."})).subsets(docs) == {
        "ArXiv": [1],
        "Wiki": [0],
    }
    # an empty document is skipped, as the reference's Pile dataset does, with one warning per file
    skipping = write(
        tmp_path / "p3.jsonl",
        {"text": [], "text_pretokenized": "", "meta": {"pile_set_name": "Pile-CC"}},
        {"text_pretokenized": "hello world", "meta": {"pile_set_name": "Pile-CC"}},
        {"text_pretokenized": "", "meta": {"pile_set_name": "Pile-CC"}},
    )
    with pytest.warns(DataWarning, match=r"p3\.jsonl: skipped 2 empty document\(s\) \(line 1, 3\)"):
        (kept,) = read_pile(skipping, tok, 150528)
    assert kept.tokens == tok.encode("hello world")
    with pytest.raises(TaskError, match=r"p2\.jsonl:1: need meta\.pile_set_name"):
        read_pile(write(tmp_path / "p2.jsonl", {"text_pretokenized": "x"}), tok, 150528)


def test_prepare_checks_data_folders_and_globs_before_scoring(tmp_path):
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "a.jsonl", {"inputs_pretokenized": "x", "choices_pretokenized": ["a"], "label": 0})
    config = parse_task_config({"name": "x", "type": "mul", "path": "data"}, tmp_path / "x.yaml")
    (prepared,) = prepare([config])  # relative to the YAML's folder
    assert prepared.files == {"all": [tmp_path / "data" / "a.jsonl"]}
    assert prepare([config], data_path=tmp_path)[0].data_dir == tmp_path / "data"
    with pytest.raises(TaskError, match=r"data folder .* does not exist"):
        prepare([config], data_path=tmp_path / "elsewhere")
    grouped = parse_task_config(
        {"name": "x", "type": "mul", "path": "data", "file_pattern": {"g": "*.json"}}, tmp_path / "x.yaml"
    )
    with pytest.raises(TaskError, match="no files match"):
        prepare([grouped])
    with pytest.raises(TaskError, match="unknown metric 'Rouge'"):
        prepare([parse_task_config({"name": "x", "type": "mul", "path": "data", "metrics": ["Rouge"]}, tmp_path / "y")])


def test_a_yaml_syntax_error_is_one_line_with_its_position(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ntype: [mul\n", encoding="utf-8")
    with pytest.raises(TaskError) as error:
        load_task_file(path)
    message = str(error.value)
    assert "\n" not in message and f"{path}:" in message and "not valid YAML" in message
