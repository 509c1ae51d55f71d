"""The sensor benchmark runs end to end on a tiny landing and reports comparable rows."""

from __future__ import annotations

import json

from benchmarks.sensor import bench_sensor
from flywheel import ingest


def test_bench_sensor_tiny(monkeypatch):
    monkeypatch.setattr(ingest, "LIST_PAGE", 10)  # 60 clips: six pages, so one page is not all of them
    out = bench_sensor(sizes=(60,), max_clips=5, min_clips=1, steady_ticks=2, threads=4)
    first, steady, full = out["rows"]
    assert [r["tick"] for r in out["rows"]] == ["scan, first tick", "scan, steady tick (median of 2)",
                                                "full listing (before)"]  # fmt: skip
    assert len(steady["all_seconds"]) == 2 and out["markdown"].count("\n") == 4
    for row in (first, steady, full):  # each tick committed a batch: 5 claims, the plan, the manifest
        assert row["clips"] == 60 and row["requests"]["PutObject"] == 7
    assert first["requests"]["ListObjectsV2"] == steady["requests"]["ListObjectsV2"] == 6
    assert json.loads(steady["cursor"])["batches"] == 3
    assert full["pending"] == 60 - 4 * 5
