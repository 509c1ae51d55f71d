"""A fleet that sees another world (benchmarks/worlds.py): its clips go through the same fleet, MCAP
and ground truth as the road simulator's, and the engine benchmark runs on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks.worlds import DigitsWorld, world_for
from flywheel import sim
from flywheel.cli import main
from flywheel.clips import read_clip
from flywheel.config import CONDITIONS, Settings
from flywheel.store import open_store


def digits_settings(**sim_overrides) -> Settings:
    base = {"width": 32, "height": 32, "frames_per_clip": 4, "vehicles": 2}
    return Settings.model_validate({"classes": DigitsWorld.classes, "image_size": 32, "sim": base | sim_overrides})


def test_digit_clips_read_back_with_one_digit_per_clip(tmp_path):
    settings, store = digits_settings(), open_store(str(tmp_path))
    keys = sim.simulate(store, settings, clips=8, seed=1, world=DigitsWorld())
    labels = set()
    for key in keys:
        clip = read_clip(store.read_bytes(key), classes=settings.classes)
        assert clip.meta.extra["condition"] in CONDITIONS
        assert clip.meta.trigger == "random"  # nothing is ever close ahead: no hard brakes
        truth = {f.ground_truth for f in clip.frames}
        assert len(truth) == 1 and truth <= set(DigitsWorld.classes)
        assert all((f.height, f.width) == (32, 32) for f in clip.frames)
        labels |= truth
    assert len(labels) > 2


def test_the_same_seed_gives_the_same_frames_and_the_held_out_digits_are_others():
    settings, world = digits_settings(), DigitsWorld()
    a, la = sim.render_frames(np.random.default_rng(5), 6, "fog", settings, per_clip=2, world=world)
    b, lb = sim.render_frames(np.random.default_rng(5), 6, "fog", settings, per_clip=2, world=world)
    assert np.array_equal(a, b) and la == lb
    fleet, held = world._digits()[0], world_for("digits", heldout=True)._digits()[0]
    assert len(fleet) == 1300 and len(held) == 1797 - 1300
    assert not {m.tobytes() for m in fleet} & {m.tobytes() for m in held}  # no digit in both


def test_fog_and_night_take_contrast_away():
    settings, world = digits_settings(), DigitsWorld()
    spread = {}
    for cond in ("day", "night", "fog"):
        f, _ = sim.render_frames(np.random.default_rng(2), 40, cond, settings, per_clip=1, world=world)
        spread[cond] = float(f.astype(np.float32).reshape(len(f), -1).std(axis=1).mean())
    assert spread["fog"] < 0.6 * spread["day"] and spread["night"] < 0.6 * spread["day"]


def test_classes_other_than_the_worlds_are_refused(tmp_path):
    road = Settings.model_validate({"sim": {"width": 32, "height": 32, "frames_per_clip": 2}})
    with pytest.raises(ValueError, match=r"world's classes .*clear_road"):
        sim.simulate(open_store(str(tmp_path)), road, clips=1, world=DigitsWorld())
    with pytest.raises(ValueError, match="unknown world 'moon'"):
        world_for("moon")
    with pytest.raises(ValueError, match="conditions day, night, rain and fog, not 'snow'"):
        sim.render_frames(np.random.default_rng(0), 1, "snow", digits_settings(), world=DigitsWorld())


@pytest.mark.slow
def test_bench_engine_quick_on_the_digits_world(tmp_path):
    result = CliRunner().invoke(main, ["bench", "engine", "--quick", "--world", "digits", "--arms", "random,engine_novelty",
                                       "--out", str(tmp_path / "out"), "--workdir", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "out" / "engine_ab_quick.json").read_text())
    assert out["config"]["world"] == "digits" and out["chance"] == 0.1
    random, novelty = out["runs"]["random"][0], out["runs"]["engine_novelty"][0]
    assert (random[0]["accuracy"], random[0]["train_frames"]) == (novelty[0]["accuracy"], novelty[0]["train_frames"])
    assert novelty[1]["triggers"].keys() <= {"random", "novel"}
