"""scripts/keep_best_vs_last.py: kept vs last epoch read from stored `bench recipe` results."""

import importlib.util
import json
from pathlib import Path

import pytest


def _script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "keep_best_vs_last.py"
    spec = importlib.util.spec_from_file_location("keep_best_vs_last", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(seed, kept, last, cnn=None):
    arm = {"accuracy": kept, "curve": [[1.0, 0.1], [2.0, last]], "best_epoch": 0, "epochs": 2}
    return {"dataset": "d", "size": 100, "seed": seed, "recipe": arm, **({"cnn": {"accuracy": cnn}} if cnn else {})}


def test_kept_against_last_per_file_and_over_all_rows_leaving_out_refits(tmp_path):
    a, refit, out = tmp_path / "a.json", tmp_path / "refit.json", tmp_path / "out.json"
    a.write_text(json.dumps({"config": {"train": {"keep_best": True}},
                             "rows": [_row(0, 0.80, 0.82, 0.7), _row(1, 0.70, 0.70, 0.6), _row(2, 0.60, 0.59, 0.5),
                                      {"dataset": "d", "size": 100, "seed": 3, "recipe": {"accuracy": 0.5}}]}))  # fmt: skip
    refit.write_text(json.dumps({"config": {"train": {"refit": True}}, "rows": [_row(0, 0.1, 0.9)]}))
    report = _script().main(out, [a, refit])
    assert json.loads(out.read_text()) == report and not out.with_suffix(".tmp").exists()
    every = report["all"]  # the refit file and the row without a curve are left out
    assert (every["rows"], every["last_above"], every["level"], every["last_below"]) == (3, 1, 1, 1)
    assert every["mean_last_minus_kept"] == pytest.approx((0.02 + 0.0 - 0.01) / 3, abs=1e-4)
    [group] = report["datasets"]
    assert (group["kept"], group["last"], group["cnn"]) == (pytest.approx(0.7), pytest.approx(0.7033, abs=1e-4),
                                                            pytest.approx(0.6))  # fmt: skip
