"""``glm-engine bench`` reports the measuring process's peak resident set, loading included, beside tokens/s
(issue 20, item 3): the per-measurement peak resets must not hide the loading peak."""

import csv
import io
import json

import pytest
import torch

from glm_engine.bench import device as device_module
from glm_engine.bench.measure import Measurement, Sample
from glm_engine.bench.report import ReportFormat, render_report
from glm_engine.bench.rows import row_from_measurement
from glm_engine.bench.spec import Kind, Point, QuantChoice, TestSpec

META = {"model": {"description": "a test model"}, "devices": [], "protocol": {"repetitions": 1, "warmup": 0}}
SLACK = 8 * 2**20  # the kernel's resident-set counters are per-thread caches, exact only to a few pages


def test_the_process_peak_survives_the_per_measurement_reset():
    if device_module._vm_hwm_bytes() is None or not device_module._CLEAR_REFS.exists():
        pytest.skip("no VmHWM / clear_refs here")
    block = torch.ones(64 * 2**20, dtype=torch.float32)  # 256 MiB, touched: a loading-sized peak
    with_block = device_module.host_resident_bytes()
    del block
    memory = device_module.MemoryTracker(torch.device("cpu"))
    memory.reset()
    assert memory.host_peak() < with_block - 128 * 2**20  # the per-measurement peak starts again below it
    assert device_module.process_peak_bytes() >= with_block - SLACK  # the process peak still holds it


def test_the_row_and_every_report_format_carry_the_process_peak():
    point = Point("cpu", "bf16", QuantChoice(), 1, 1, 0, TestSpec(Kind.GENERATE, 0, 4))
    measured = Measurement([Sample(0.1, [0.1, 0.1])], 2**30, None, "host clock", process_peak_bytes=3 * 2**30)
    row = row_from_measurement("cpu", point, measured, None, None, "test cpu")
    assert row.peak_rss_mb == 3072 and row.peak_host_mb == 1024
    table = render_report(META, [row], ReportFormat.md, "cpu", "transformers")
    header = next(line for line in table.splitlines() if line.startswith("| engine"))
    cells = [c.strip() for c in header.split("|")]
    values = [c.strip() for c in next(line for line in table.splitlines() if line.startswith("| cpu")).split("|")]
    assert values[cells.index("peak RSS MB")] == "3072"
    assert cells.index("peak RSS MB") == cells.index("t/s") + 1  # beside tokens/s
    (csv_row,) = csv.DictReader(io.StringIO(render_report(META, [row], ReportFormat.csv, "cpu", "transformers")))
    assert float(csv_row["peak_rss_mb"]) == 3072
    assert json.loads(render_report(META, [row], ReportFormat.json, "cpu", "transformers"))["rows"][0]["peak_rss_mb"]
