"""The engine benchmark runs both arms end to end on a tiny scale and reports comparable figures."""

from __future__ import annotations

from benchmarks.engine import bench_engine


def test_bench_engine_tiny(tmp_path):
    # 8 clips of 8 frames, 32 labeled: with seed 0 both splits that evaluation and deploy need get frames
    out = bench_engine(tmp_path, iterations=2, clips_per_iteration=8, label_budget=32, epochs=1,
                       test_per_condition=8, image_size=32)  # fmt: skip
    random, engine = out["arms"]["random"], out["arms"]["engine"]
    assert len(random) == len(engine) == 2
    for rows in (random, engine):
        assert [r["human_labels_total"] for r in rows] == [32, 64]  # the same budget spent per iteration
        assert all(0 <= r["accuracy"] <= 1 and 0 <= r["fog_accuracy"] <= 1 for r in rows)
    assert all(r["auto_labels"] == 0 for r in random)  # the random arm labels by hand only
    assert engine[0]["triggers"].keys() <= {"random", "hard_brake"}  # no champion yet: no shadow mode
    assert engine[1]["triggers"].keys() <= {"random", "hard_brake", "low_confidence"}
    assert "low_confidence" not in random[1]["triggers"]
    assert out["target_fog_accuracy"] == random[-1]["fog_accuracy"]


def test_bench_label_errors_tiny(tmp_path):
    """Errors injected at a known rate are counted, and flags are scored against them."""
    from benchmarks.label_errors import THRESHOLDS, bench_label_errors

    out = bench_label_errors(tmp_path, batches=2, clips=20, label_budget=60, error_rate=0.5, steps=10)
    assert out["human_labels_checked"] == 60  # the second batch's answers (the first trains the champion)
    assert 15 <= out["injected_errors"] <= 45  # half of 60, give or take the draw
    rows = out["rows"]
    assert [r["min_score"] for r in rows] == list(THRESHOLDS)
    assert [r["flagged"] for r in rows] == sorted((r["flagged"] for r in rows), reverse=True)  # stricter: fewer
    for r in rows:
        assert 0 <= r["true_errors_flagged"] <= min(r["flagged"], out["injected_errors"])
        assert r["recall"] == round(r["true_errors_flagged"] / out["injected_errors"], 3)
