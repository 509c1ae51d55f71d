"""The recipe benchmark: both arms on the same frames and held-out clips, figures that make sense,
and datasets that are what they say (held out by clip, geometry labels that flips change)."""

from __future__ import annotations

import json
from collections import Counter

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks.datasets import (
    DATASETS,
    GEOMETRY_CLASSES,
    GEOMETRY_SIZE,
    SIM96_SHARES,
    make_frames,
    shape_centre_x,
)
from flywheel.cli import main


def test_bench_recipe_quick_through_the_cli(tmp_path):
    args = ["bench", "recipe", "--quick", "--datasets", "geometry,digits", "--threads", "1",
            "--set", "train.width=8", "--workdir", str(tmp_path)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["config"]["overrides"]["train.width"] == 8 and out["config"]["train"]["width"] == 8
    rows = out["rows"]
    assert [(r["dataset"], r["size"]) for r in rows] == [
        ("geometry", 96), ("geometry", 192), ("digits", 96), ("digits", 192)
    ]  # fmt: skip
    for r in rows:
        classes = DATASETS[r["dataset"]].classes
        arms = ["recipe", "baseline"] + (["recipe_warm"] if r["size"] == 192 else [])
        assert sorted(a for a in ("recipe", "recipe_warm", "baseline") if a in r) == sorted(arms)
        for arm in arms:
            assert 0 <= r[arm]["accuracy"] <= 1 and 0 <= r[arm]["macro_f1"] <= 1
            assert list(r[arm]["recall"]) == classes
            assert all(0 <= v <= 1 for v in r[arm]["recall"].values())
            assert r[arm]["frames"] == r["heldout_frames"]  # every arm scored on the same frames
        delta = r["recipe"]["accuracy"] - r["baseline"]["accuracy"]
        assert r["delta"] == pytest.approx(delta, abs=1e-4)
        assert r["frames"] <= r["pool_frames"]
        assert r["train_rows"] == r["frames"] + r["offline_copies"]
    assert rows[1]["recipe_warm"]["warm_started"] and not rows[1]["recipe"]["warm_started"]
    for name in ("geometry", "digits"):  # one held-out set per dataset, whatever the size
        assert len({r["heldout_sha256"] for r in rows if r["dataset"] == name}) == 1
    assert rows[0]["pool_frames"] < rows[1]["pool_frames"]
    assert "| geometry | 96 |" in out["markdown"]


@pytest.mark.parametrize("name", ["sim", "geometry", "digits"])
def test_heldout_clips_are_apart_and_sizes_are_prefixes(name):
    small, large = make_frames(name, frames=40), make_frames(name, frames=80)
    held = make_frames(name, frames=40, heldout=True)
    assert not set(held.clips) & set(large.clips)
    assert small.images == large.images[: len(small)]  # the smaller pool: the larger's first clips
    cut = large.take(40)
    assert len(cut) >= 40 and (len(cut) == len(large) or large.clips[len(cut)] != cut.clips[-1])


def test_geometry_labels_follow_position_so_a_flip_changes_them():
    frames = make_frames("geometry", frames=64)
    checked = 0
    for data, label in zip(frames.images, frames.labels, strict=True):
        rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        x, flipped_x = shape_centre_x(rgb), shape_centre_x(np.ascontiguousarray(rgb[:, ::-1]))
        if abs(x - GEOMETRY_SIZE / 2) < 2:  # on the middle line the pixel centroid may round over
            continue
        side = GEOMETRY_CLASSES[label].split("_")[0]
        assert side == ("left" if x < GEOMETRY_SIZE / 2 else "right")
        flipped_side = "left" if flipped_x < GEOMETRY_SIZE / 2 else "right"
        assert flipped_side != side  # the flipped frame belongs to the other class
        checked += 1
    assert checked >= 48


def test_sim96_is_imbalanced_as_asked():
    frames = make_frames("sim96", frames=400)
    shares = {frames.classes[k]: n / len(frames) for k, n in Counter(frames.labels).items()}
    for cls, share in SIM96_SHARES.items():
        assert shares[cls] == pytest.approx(share, abs=0.02)
