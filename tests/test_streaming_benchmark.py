"""benchmarks/streaming.py runs end to end (`--smoke`: 48 small JPEGs, the local S3 server) and
prints its table: one row per source, finite positive rates, the folder the unit of the ratios."""

from __future__ import annotations

import pytest

from test_benchmarks import assert_positive, parse_table, run_smoke

pytest.importorskip("litdata")
pytest.importorskip("moto")


def test_streaming_benchmark_smoke_prints_one_row_per_source(tmp_path):
    out = run_smoke("streaming.py", tmp_path, "--dir", str(tmp_path / "images"))
    assert "prepare (shard writing" in out and "images/s" in out
    headers, rows = parse_table(out)
    assert headers == ["source", "images/s", "CPU ms per image", "vs folder, images/s", "vs folder, per CPU second"]
    assert [row["source"] for row in rows] == ["folder", "shards, local disk", "shards, S3 on loopback"]
    for row in rows:
        assert_positive(row, headers[1:])
    assert rows[0]["vs folder, images/s"] == rows[0]["vs folder, per CPU second"] == "1"
