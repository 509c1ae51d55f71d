"""The per-turn yardstick check: it flags a challenger that a plain CNN beats, and says "broken",
never "not short", when the yardstick itself did not learn."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.recipe import train_recipe
from flywheel.config import load_settings
from flywheel.store import open_store
from flywheel.training import baseline
from tests.synthetic import separable_dataset

SPLITS = {"train": 320, "val": 96}


def _version(tmp_path, by: str, **train):
    # refit off: the check judges the select run (trained on train, scored on val), the same with or without it
    settings = load_settings(None, **{"classes": ["a", "b", "c"], "image_size": 32, "store.root": str(tmp_path),
                                      "train.batch_size": 32, "train.device": "cpu", "train.refit": False,
                                      **{f"train.{k}": v for k, v in train.items()}})  # fmt: skip
    store = open_store(settings.store_root)
    return store, settings, separable_dataset(store, settings, per_split=SPLITS, by=by)


def test_the_check_flags_a_crippled_challenger(tmp_path):
    # The label is where the square is: a plain CNN learns it in a few epochs; a challenger that
    # pools its features away and barely trains does not.
    store, settings, manifest = _version(tmp_path, "position", head="pool", lr=1e-5, epochs=1)
    weak = train_recipe(store, settings, manifest)[0].select
    check = baseline.check_challenger(store, manifest, weak.weights, image_size=32, metric="accuracy", epochs=8)
    assert check["baseline_val_accuracy"] >= check["majority_share"] + 0.2  # the yardstick learned
    assert check["challenger"] < check["baseline"] - check["allowance"]  # beyond the noise
    assert check["verdict"] == "short" and check["short"]


@pytest.mark.slow
def test_the_check_passes_a_challenger_trained_at_the_defaults(tmp_path):
    store, settings, manifest = _version(tmp_path, "position", steps=150)
    good = train_recipe(store, settings, manifest)[0].select
    check = baseline.check_challenger(store, manifest, good.weights, image_size=32, metric="accuracy", epochs=8)
    assert check["verdict"] == "ok" and not check["short"]
    # at or above the yardstick, or below it by no more than the noise of 96 val frames
    assert check["challenger"] >= check["baseline"] - check["allowance"] and check["baseline"] > check["majority_share"]
    assert check["allowance"] <= 0.05


def test_a_yardstick_that_does_not_learn_is_reported_broken(tmp_path):
    # Labels drawn apart from the images: whatever the challenger scores, the comparison shows nothing.
    store, settings, manifest = _version(tmp_path, "nothing", epochs=1)
    weights = train_recipe(store, settings, manifest)[0].select.weights
    check = baseline.check_challenger(store, manifest, weights, image_size=32, metric="accuracy", epochs=2)
    assert check["verdict"] == "broken" and not check["short"]
    assert check["baseline_val_accuracy"] < check["majority_share"] + baseline.LEARNED


@pytest.mark.parametrize("kind", sorted(baseline.YARDSTICKS))
def test_yardsticks_take_uint8_frames_and_name_bad_input(kind):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8), rng.integers(0, 3, 8)
    model = baseline.train_yardstick(x, y, num_classes=3, kind=kind, epochs=1, batch_size=4)
    assert model(__import__("torch").from_numpy(x)).shape == (8, 3)
    with pytest.raises(ValueError, match="yardstick must be one of"):
        baseline.train_yardstick(x, y, num_classes=3, kind="vgg")
    with pytest.raises(ValueError, match="at least one train frame"):
        baseline.train_yardstick(x[:0], y[:0], num_classes=3, kind=kind)


def test_a_yardstick_on_a_handful_of_frames_trains_without_a_warmup():
    # 6 frames in batches of 4: 2 steps a pass, too few for the one-cycle warmup (it would divide by zero)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (6, 3, 16, 16), dtype=np.uint8), np.array([0, 1, 2, 0, 1, 2])
    model = baseline.train_yardstick(x, y, num_classes=3, epochs=2, batch_size=4)
    assert not model.training
