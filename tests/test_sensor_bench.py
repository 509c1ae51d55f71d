"""The sensor benchmark runs end to end on a tiny landing and reports comparable rows."""

from __future__ import annotations

import json

from benchmarks.sensor import bench_sensor
from flywheel.ingest import landing


def test_bench_sensor_tiny(monkeypatch):
    monkeypatch.setattr(landing, "LIST_PAGE", 10)  # 60 clips: six pages, so one page is not all of them
    out = bench_sensor(sizes=(60,), max_clips=5, min_clips=3, steady_ticks=2, threads=4, list_pages=2)
    first, steady, full, bounded, whole = out["rows"]
    assert [r["tick"] for r in out["rows"]] == ["scan, first tick", "scan, steady tick (median of 2)",
                                                "full listing (before)", "idle, page budget (2 pages)",
                                                "idle, whole round (before)"]  # fmt: skip
    assert len(steady["all_seconds"]) == 2 and out["markdown"].count("\n") == 6
    for row in (first, steady, full):  # each tick committed a batch: 5 claims, the plan, the manifest
        assert row["clips"] == 60 and row["requests"]["PutObject"] == 7
    assert first["requests"]["ListObjectsV2"] == steady["requests"]["ListObjectsV2"] == 6
    assert json.loads(steady["cursor"])["batches"] == 3
    assert full["pending"] == 60 - 4 * 5
    # idle: 2 clips wait (below 3); the bounded tick lists 2 pages of landing, the whole round all 6
    assert bounded["waiting"] == whole["waiting"] == 2 and "PutObject" not in bounded["requests"]
    landing_pages = {r["tick"]: r["requests"]["ListObjectsV2"] for r in (bounded, whole)}
    assert landing_pages[bounded["tick"]] < landing_pages[whole["tick"]]
    assert whole["skip"].startswith("2 new clip(s)") and bounded["skip"].startswith("at least")
