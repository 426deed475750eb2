"""``glm-engine bench`` given bad input: one ``error:`` line, the right exit code, no traceback, all before anything
is measured. Rows run in-process on the demo model and tiny random presets."""

from __future__ import annotations

import pytest

from tests.bad_input_table import USAGE_ERROR, assert_clean_failure, expand, invoke, make_bad_files, row

QUICK = ["-t", "pp4", "-r", "1", "--warmup", "0", "--bandwidth-gib", "0", "--no-baseline"]
TINY = ["--model", "random:glm-tiny", *QUICK]

ROWS = [
    row("model-missing", ["--model", "{tmp}/nope", *QUICK], "does not exist"),
    row("model-empty-folder", ["--model", "{tmp}/emptydir", *QUICK], "is not a checkpoint"),
    row("model-empty-string", ["--model", "", *QUICK], "--model is empty"),
    row("random-model-unknown", ["--model", "random:nope", *QUICK], "unknown random model 'random:nope'"),
    row("random-model-without-name", ["--model", "random:", *QUICK], "unknown random model"),
    row("layers-without-random-model", ["--layers", "2", *QUICK], "use --model random:<preset>"),
    row("layers-zero", [*TINY, "--layers", "0"], "--layers must be at least 1"),
    row("layers-negative", [*TINY, "--layers", "-1"], "--layers must be at least 1"),
    row("layers-not-a-number", [*TINY, "--layers", "two"], "'--layers'", USAGE_ERROR),
    row("heads-zero", [*TINY, "--heads", "0"], "--heads must be at least 1"),
    row("heads-that-do-not-divide", [*TINY, "--heads", "3"], "must divide hidden_size"),
    row("inner-zero", [*TINY, "--inner", "0"], "--inner must be at least 1"),
    row("hidden-not-a-head-multiple", [*TINY, "--hidden", "7"], "is not a multiple of"),
    row("kv-heads-zero", [*TINY, "--kv-heads", "0"], "--kv-heads must be at least 1"),
    row("kv-heads-on-a-model-without-groups", [*TINY, "--kv-heads", "2"], "--kv-heads shapes grouped-query models"),
    row("random-model-too-large", [*TINY, "--layers", "100000", "--hidden", "100000"], "of host memory"),
    row("test-unknown", ["--test", "xx12"], "unknown test 'xx12'"),
    row("test-zero-length", ["--test", "pp0"], "lengths must be at least 1"),
    row("test-negative", ["--test", "pp-1"], "unknown test 'pp-1'"),
    row("test-pg-without-generation", ["--test", "pg5"], "needs a generation length too"),
    row("test-pg-zero-generation", ["--test", "pg5,0"], "must be an integer >= 1"),
    row("test-empty", ["--test", ""], "no tests given"),
    row("test-beyond-positions", ["--test", "pp100000"], "needs 100000 positions"),
    row("depth-negative", ["--depth", "-1"], "--depth takes integers >= 0"),
    row("depth-beyond-positions", ["--depth", "100000"], "use shorter tests or a smaller --depth"),
    row("batch-zero", ["--batch", "0"], "--batch takes integers >= 1"),
    row("batch-not-a-number", ["--batch", "abc"], "--batch takes integers >= 1"),
    row("tp-zero", ["--tp", "0"], "--tp takes integers >= 1"),
    row("tp-that-does-not-divide", ["--tp", "3"], "does not fit the built-in demo model"),
    row("backend-unknown", ["--backend", "nope"], "unknown backend 'nope'"),
    row("dtype-unknown", ["--dtype", "fp8"], "unknown dtype 'fp8'"),
    row("quant-unknown", ["--quant", "int3"], "unknown quantization 'int3'"),
    row(
        "quant-group-size-unsupported",
        ["--quant", "int4", "--quant-scheme", "groupwise", "--quant-group-size", "5"],
        "group size must be one of 32, 64, 128",
    ),
    row("quant-group-size-zero", ["--quant-group-size", "0"], "--quant-group-size takes integers >= 1"),
    row("quant-output-not-a-switch", ["--quant-output", "maybe"], "--quant-output takes off/on"),
    row("repetitions-zero", ["-r", "0"], "--repetitions must be at least 1"),
    row("warmup-negative", ["--warmup", "-1"], "--warmup at least 0"),
    row("bandwidth-negative", ["--bandwidth-gib", "-1"], "--bandwidth-gib takes a size in GiB"),
    row("bandwidth-nan", ["--bandwidth-gib", "nan"], "--bandwidth-gib takes a size in GiB"),
    row("seed-beyond-64-bits", [*QUICK, "--seed", str(2**70)], "--seed must fit in 64 bits"),
    row("output-format-unknown", ["--output", "xml"], "'--output'", USAGE_ERROR),
    row("out-is-a-folder", [*QUICK, "--out", "{tmp}/emptydir"], "is a folder; give the path of a file"),
    row("out-folder-missing", [*QUICK, "--out", "{tmp}/nodir/r.md"], "its folder"),
    row("out-unwritable", [*QUICK, "--out", "{unwritable}/r.md"], "cannot write into"),
    row("plot-is-a-folder", [*QUICK, "--plot", "{tmp}/emptydir"], "is a folder; give the path of a file"),
    row("plot-folder-missing", [*QUICK, "--plot", "{tmp}/nodir/p.png"], "its folder"),
    row("baseline-python-missing", ["-t", "pp4", "-r", "1", "--baseline-python", "/no/python"], "no such interpreter"),
    row("baseline-code-missing", ["-t", "pp4", "-r", "1", "--baseline-code", "{tmp}/nodir"], "is not a folder"),
    row("chatglm-cpp-missing", [*QUICK, "--compare-chatglm-cpp", "{tmp}/nodir"], "does not exist"),
]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad-bench"))


@pytest.mark.parametrize(("argv", "stdin", "exit_code", "fragment"), ROWS)
def test_bench_refuses_bad_input_with_one_line(argv, stdin, exit_code, fragment, tmp, monkeypatch):
    import glm_engine.cli.bench as command

    def no_measuring(*args, **kwargs):
        raise AssertionError("bench measured: the bad input was found only after the compute")

    monkeypatch.setattr(command, "run_plan", no_measuring)  # every row must fail before it
    result = invoke(["bench", *expand(argv, tmp)], stdin)
    assert_clean_failure(result, exit_code, fragment)


def test_a_point_that_runs_out_of_memory_is_a_failed_row_and_the_others_remain(monkeypatch):
    """A batch too large for the device: its row says so, the other rows and the report are kept."""
    import glm_engine.bench.runner as runner

    measure = runner.measure

    def measure_or_fail(loaded, work, point, *args, **kwargs):
        if point.batch > 1:  # what torch's CPU allocator raises
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 2457600000000 bytes")
        return measure(loaded, work, point, *args, **kwargs)

    monkeypatch.setattr(runner, "measure", measure_or_fail)
    result = invoke(["bench", *QUICK, "--batch", "1,4096", "--output", "csv"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("cpu,")]
    assert len(rows) == 2
    assert ",ok," in rows[0] and ",failed," in rows[1] and "out of memory at batch 4096" in rows[1]
