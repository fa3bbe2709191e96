"""benchmarks/export_latency.py --smoke: the latency table of PyTorch against onnxruntime has a row per
batch (1 and 32), positive times, and outputs that agree (the benchmark times the same function)."""

from __future__ import annotations

import math

import pytest

from test_benchmarks import parse_table, run_smoke

pytest.importorskip("onnxruntime")


def test_export_latency_smoke_times_both_runtimes_at_batch_1_and_32(tmp_path):
    out = run_smoke("export_latency.py", tmp_path)
    header, rows = parse_table(out)
    assert header == ["model", "batch", "PyTorch ms", "onnxruntime ms", "PyTorch / onnxruntime", "max abs difference"]
    assert [row["batch"] for row in rows] == ["1", "32"]
    for row in rows:
        times = [float(row[key]) for key in ("PyTorch ms", "onnxruntime ms", "PyTorch / onnxruntime")]
        assert all(math.isfinite(t) and t > 0 for t in times), row
        assert float(row["max abs difference"]) < 1e-4, row
