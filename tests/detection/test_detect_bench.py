"""`flywheel bench detect`: the simulator's boxes through the production ingest into the detector."""

from __future__ import annotations

import json

from click.testing import CliRunner

from benchmarks.detect import bench_settings, fleet_frames
from flywheel.cli import main


def test_simulated_boxes_reach_the_detector_in_input_pixels(tmp_path):
    settings = bench_settings(tmp_path / "s", (96, 72))
    got = fleet_frames(tmp_path / "fleet", settings, clips=3, seed=0, size=32)
    assert got["images"].shape == (24, 3, 32, 32) and len(got["boxes"]) == len(got["conditions"]) == 24
    boxes = [b for frame in got["boxes"] for b in frame]
    assert boxes, "the simulator's clips carry boxes"
    for cls, x, y, w, h in boxes:
        assert settings.classes[cls] != "clear_road" and w > 0 and h > 0
        assert -1e-3 <= x and x + w <= 32 + 1e-3 and -1e-3 <= y and y + h <= 32 + 1e-3


def test_bench_detect_quick_writes_its_result(tmp_path):
    out = tmp_path / "detect.json"
    result = CliRunner().invoke(main, ["bench", "detect", "--quick", "--out", str(out), "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [row] = json.loads(out.read_text())["rows"]
    assert row["frames"] == 32 and row["boxes"] > 0 and row["test_boxes"] > 0
    assert set(row["per_class"]) >= {"vehicle", "pedestrian"} and all(k.startswith("condition=") for k in row["per_slice"])
    assert "| 0 | 4 (32) |" in result.output
