"""The fleet simulator: rendering, MCAP clips that read back, drift, state, determinism."""

from __future__ import annotations

import dataclasses
import io
from collections import Counter

import numpy as np
import pytest
from mcap.reader import make_reader

from flywheel import layout, sim
from flywheel.clips import read_clip
from flywheel.config import CONDITIONS, DEFAULT_CLASSES, Settings
from flywheel.sim.draw import Painter, _box, _draw_actor
from flywheel.sim.scene import Actor, _ahead, _light_top, _sample_main_actor
from flywheel.store import open_store


def small(**sim_overrides) -> Settings:
    """Tiny images and short clips: fast tests."""
    base = {"width": 32, "height": 24, "frames_per_clip": 3, "vehicles": 3}
    return Settings.model_validate({"sim": base | sim_overrides})


def test_render_clip_has_configured_size_and_known_labels():
    settings = Settings.model_validate({"sim": {"width": 40, "height": 30, "frames_per_clip": 5}})
    frames, labels = sim.render_clip(
        np.random.default_rng(0), condition="day", settings=settings, clip_index=0
    )
    assert len(frames) == len(labels) == 5
    for f in frames:
        assert f.shape == (30, 40, 3) and f.dtype == np.uint8
    assert set(labels) <= set(DEFAULT_CLASSES)


@pytest.mark.parametrize("condition", CONDITIONS)
def test_render_frames_every_condition(condition):
    frames, labels = sim.render_frames(np.random.default_rng(1), 10, condition, small(), per_clip=3)
    assert frames.shape == (10, 24, 32, 3) and frames.dtype == np.uint8
    assert len(labels) == 10 and set(labels) <= set(DEFAULT_CLASSES)
    assert frames.std() > 3  # an image, not a flat colour


def test_conditions_look_different():
    """Night is dark, fog is bright, and fog and rain wash out the contrast around the horizon."""
    settings = Settings()
    brightness, contrast = {}, {}
    for cond in CONDITIONS:
        f, _ = sim.render_frames(np.random.default_rng(2), 64, cond, settings)
        gray = f.astype(np.float32).mean(axis=3)  # (N, 72, 96)
        brightness[cond] = gray.mean()
        contrast[cond] = gray[:, 20:40].std(axis=(1, 2)).mean()  # the band where things ahead are
    assert brightness["night"] < 0.5 * brightness["day"]
    assert brightness["fog"] > brightness["day"]
    assert contrast["fog"] < 0.5 * contrast["day"] and contrast["rain"] < 0.5 * contrast["day"]


def test_all_classes_appear_and_labels_change_within_clips():
    settings = Settings.model_validate({"sim": {"width": 48, "height": 36}})  # 16-frame clips
    rng = np.random.default_rng(3)
    seen, changed, similar, unrelated = Counter(), 0, [], []
    previous_last = None
    for i in range(60):
        frames, labels = sim.render_clip(rng, condition="day", settings=settings, clip_index=i)
        seen.update(labels)
        changed += len(set(labels)) > 1
        f = np.stack(frames).astype(np.float32)
        similar.append(np.abs(f[1:] - f[:-1]).mean())
        if previous_last is not None:
            unrelated.append(np.abs(f[0] - previous_last).mean())
        previous_last = f[-1]
    assert set(seen) == set(DEFAULT_CLASSES)
    assert changed >= 5  # things enter and leave the lane
    assert np.mean(similar) < 0.5 * np.mean(unrelated)  # temporal continuity within a clip


def test_render_is_deterministic_for_a_seed():
    a, la = sim.render_frames(np.random.default_rng(7), 12, "rain", small())
    b, lb = sim.render_frames(np.random.default_rng(7), 12, "rain", small())
    c, _ = sim.render_frames(np.random.default_rng(8), 12, "rain", small())
    assert np.array_equal(a, b) and la == lb
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "classes,missing_word",
    [(["clear_road", "vehicle", "pedestrian", "cyclist", "red_light", "truck"], "truck"),
     (["clear_road", "vehicle"], "pedestrian")],
)  # fmt: skip
def test_unknown_or_missing_classes_raise(tmp_path, classes, missing_word):
    settings = Settings.model_validate({"classes": classes, "sim": {"width": 32, "height": 24}})
    with pytest.raises(ValueError, match=missing_word):
        sim.simulate(open_store(str(tmp_path)), settings, clips=1)
    with pytest.raises(ValueError, match=missing_word):
        sim.render_frames(np.random.default_rng(0), 2, "day", settings)


def test_classes_in_another_order_are_accepted():
    settings = Settings.model_validate(
        {"classes": DEFAULT_CLASSES[::-1], "sim": {"width": 32, "height": 24}}
    )
    _, labels = sim.render_frames(np.random.default_rng(0), 3, "day", settings)
    assert len(labels) == 3


def test_simulated_clips_read_back(tmp_path):
    settings = small(cameras=["front", "wide"])
    store = open_store(str(tmp_path))
    keys = sim.simulate(store, settings, clips=6, seed=3)
    assert len(keys) == len(set(keys)) == 6
    for key in keys:
        _, vehicle, day, name = key.split("/")
        clip = read_clip(store.read_bytes(key), classes=settings.classes)
        assert (
            key
            == f"landing/{clip.meta.vehicle_id}/{clip.meta.recorded_at[:10]}/{clip.meta.clip_id}.mcap"
        )
        assert clip.meta.vehicle_id == vehicle and name == clip.meta.clip_id + ".mcap"
        assert clip.meta.clip_id.endswith("-s3")
        assert clip.meta.trigger in ("random", "hard_brake")
        assert clip.meta.extra["condition"] in CONDITIONS
        assert clip.meta.recorded_at.endswith("+00:00")
        assert Counter(f.camera for f in clip.frames) == {"front": 3, "wide": 3}
        for f in clip.frames:
            assert f.format == "jpeg" and (f.height, f.width) == (24, 32)
            assert f.ground_truth in DEFAULT_CLASSES
        times = [f.timestamp_ns for f in clip.frames if f.camera == "front"]
        assert np.allclose(np.diff(times), 1e9 / settings.sim.fps, atol=1)


def test_all_three_encodings_appear(tmp_path):
    store = open_store(str(tmp_path))
    keys = sim.simulate(store, small(), clips=3)
    encodings = set()
    for key in keys:
        reader = make_reader(io.BytesIO(store.read_bytes(key)))
        summary = reader.get_summary()
        encodings |= {
            c.message_encoding for c in summary.channels.values() if c.topic.startswith("/camera/")
        }
    assert encodings == {"protobuf", "json", "cdr"}


def test_same_seed_and_state_give_byte_identical_clips(tmp_path):
    a, b, c = (open_store(str(tmp_path / n)) for n in "abc")
    ka = sim.simulate(a, small(), clips=4, seed=5)
    kb = sim.simulate(b, small(), clips=4, seed=5)
    kc = sim.simulate(c, small(), clips=4, seed=6)
    assert ka == kb
    assert all(a.read_bytes(k) == b.read_bytes(k) for k in ka)
    assert [k.rsplit("-", 1)[0] for k in ka] == [
        k.rsplit("-", 1)[0] for k in kc
    ]  # same vehicles and indices
    assert all(a.read_bytes(x) != c.read_bytes(y) for x, y in zip(ka, kc, strict=True))


def test_state_persists_across_calls(tmp_path):
    once, twice = open_store(str(tmp_path / "once")), open_store(str(tmp_path / "twice"))
    keys = sim.simulate(once, small(), clips=6)
    split = sim.simulate(twice, small(), clips=2) + sim.simulate(twice, small(), clips=4)
    assert split == keys  # the second call goes on where the first stopped
    assert all(once.read_bytes(k) == twice.read_bytes(k) for k in keys)
    assert sim.read_state(twice) == {"recorded": 6, "uploaded": 6}
    assert not [
        o.key for o in twice.list("sim/") if o.key != layout.SIM_STATE
    ]  # no temporary files left


def test_condition_mix_drifts_linearly():
    s = small(
        conditions_start={"day": 1.0}, conditions_end={"fog": 1.0, "night": 1.0}, drift_clips=100
    ).sim
    assert sim.condition_mix(s, 0) == {"day": 1.0, "night": 0.0, "rain": 0.0, "fog": 0.0}
    assert sim.condition_mix(s, 50) == pytest.approx(
        {"day": 0.5, "night": 0.25, "rain": 0.0, "fog": 0.25}
    )
    assert sim.condition_mix(s, 100) == sim.condition_mix(s, 10_000)


def test_condition_mix_of_simulated_clips_reaches_the_end_mix(tmp_path):
    end = {"day": 0.4, "night": 0.2, "rain": 0.2, "fog": 0.2}
    settings = small(width=16, height=16, frames_per_clip=1, drift_clips=20, conditions_end=end)
    store = open_store(str(tmp_path))
    sim.simulate(store, settings, clips=20)  # the drift
    keys = sim.simulate(store, settings, clips=300)  # after it: the end mix
    got = Counter(
        read_clip(store.read_bytes(k), classes=settings.classes).meta.extra["condition"]
        for k in keys
    )
    for cond, p in end.items():
        tolerance = 4 * (p * (1 - p) / len(keys)) ** 0.5  # 4 standard errors
        assert abs(got[cond] / len(keys) - p) < tolerance, (cond, got)


def test_clock_moves_days_and_night_clips_happen_at_night(tmp_path):
    settings = small(width=16, height=16, frames_per_clip=1, conditions_start={"night": 1.0},
                     conditions_end={"night": 1.0})  # fmt: skip
    extras = sim.SimExtras(clips_per_day=5)
    store = open_store(str(tmp_path))
    keys = sim.simulate(store, settings, clips=12, extras=extras)
    dates = sorted({k.split("/")[2] for k in keys})
    assert len(dates) == 3
    for k in keys:
        hour = int(read_clip(store.read_bytes(k), classes=settings.classes).meta.recorded_at[11:13])
        assert hour >= 20 or hour < 5


def test_upload_filter_decides_in_shadow_mode(tmp_path):
    settings = small()
    seen = []

    def uncertain_at_night(frames, meta):
        seen.append((frames.shape, frames.dtype, meta["condition"]))
        return "low_confidence" if meta["condition"] == "night" else None

    store = open_store(str(tmp_path))
    keys = sim.simulate(store, small(conditions_start={"day": 0.5, "night": 0.5}), clips=12,
                        upload_filter=uncertain_at_night)  # fmt: skip
    assert all(shape == (3, 24, 32, 3) and dtype == np.uint8 for shape, dtype, _ in seen)
    metas = [read_clip(store.read_bytes(k), classes=settings.classes).meta for k in keys]
    triggers = Counter(m.trigger for m in metas)
    assert triggers["low_confidence"] > 0
    for m in metas:
        if m.trigger == "low_confidence":
            assert m.extra["condition"] == "night"
        if m.trigger == "random":
            assert m.extra["condition"] == "day"
    state = sim.read_state(store)
    assert (
        state["uploaded"] == 12 and state["recorded"] > 12
    )  # unflagged day clips were not all uploaded


def test_a_fixed_upload_budget_records_the_same_clips_whatever_the_filter(tmp_path):
    """record=: every fleet records the same clips and the same hard brakes, and uploads exactly `clips`
    of them: hard brakes first, then the filter's picks beside a random share, then random ones."""
    settings = small(conditions_start={"day": 0.5, "night": 0.5})

    def at_night(frames, meta):
        return "low_confidence" if meta["condition"] == "night" else None

    def uploads(name, upload_filter):
        store = open_store(str(tmp_path / name))
        keys = sim.simulate(store, settings, clips=12, seed=2, record=40, upload_filter=upload_filter)
        assert sim.read_state(store) == {"recorded": 40, "uploaded": 12}
        return {k: read_clip(store.read_bytes(k), classes=settings.classes).meta for k in keys}

    plain, shadow = uploads("plain", None), uploads("shadow", at_night)
    assert len(plain) == len(shadow) == 12
    brakes = {k for k, m in plain.items() if m.trigger == "hard_brake"}
    assert brakes and brakes == {k for k, m in shadow.items() if m.trigger == "hard_brake"}
    assert {m.trigger for m in plain.values()} == {"hard_brake", "random"}
    triggers = Counter(m.trigger for m in shadow.values())
    room = 12 - len(brakes)
    # the random share of the room stays unflagged; the rest is the filter's
    assert triggers["random"] == round(room * sim.EXTRAS.random_upload_share)
    assert triggers["low_confidence"] == room - triggers["random"]
    assert all(m.extra["condition"] == "night" for m in shadow.values() if m.trigger == "low_confidence")
    assert all(m.extra["condition"] == "day" for m in shadow.values() if m.trigger == "random")
    with pytest.raises(ValueError, match="record >= clips"):
        sim.simulate(open_store(str(tmp_path / "bad")), settings, clips=5, record=4)


def test_upload_filter_must_return_a_trigger_name(tmp_path):
    with pytest.raises(ValueError, match="trigger name"):
        sim.simulate(open_store(str(tmp_path)), small(), clips=2, upload_filter=lambda f, m: 1)


def test_hard_brakes_come_with_something_close_ahead(tmp_path):
    settings = small(width=16, height=16, frames_per_clip=4)
    store = open_store(str(tmp_path))
    keys = sim.simulate(store, settings, clips=150)
    labels = {"hard_brake": Counter(), "random": Counter()}
    for k in keys:
        clip = read_clip(store.read_bytes(k), classes=settings.classes)
        labels[clip.meta.trigger].update(f.ground_truth != "clear_road" for f in clip.frames)
    share = {t: c[True] / max(1, sum(c.values())) for t, c in labels.items()}
    assert sum(labels["hard_brake"].values()) > 0
    assert share["hard_brake"] > share["random"]


def test_bad_state_file_is_an_error(tmp_path):
    store = open_store(str(tmp_path))
    store.write_json(layout.SIM_STATE, {"recorded": "many"})
    with pytest.raises(ValueError, match="state.json"):
        sim.simulate(store, small(), clips=1)


def test_negative_clip_count_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="clips"):
        sim.simulate(open_store(str(tmp_path)), small(), clips=-1)


def test_cameras_see_the_same_scene_differently():
    settings = small(cameras=["front", "wide"], frames_per_clip=4)
    front, labels_front = sim.render_clip(
        np.random.default_rng(4), condition="day", settings=settings, clip_index=0
    )
    wide, labels_wide = sim.render_clip(
        np.random.default_rng(4), condition="day", settings=settings, clip_index=0, camera="wide"
    )
    assert labels_front == labels_wide  # what is ahead does not depend on the camera
    assert not np.array_equal(np.stack(front), np.stack(wide))
    with pytest.raises(ValueError, match="rear"):
        sim.render_clip(
            np.random.default_rng(4),
            condition="day",
            settings=settings,
            clip_index=0,
            camera="rear",
        )


def test_labelled_things_are_near_enough_to_see():
    """Main actors are drawn near mid-clip: most day frames have something ahead, within ahead_range."""
    settings = Settings.model_validate({"sim": {"fps": 5, "frames_per_clip": 8}})
    rng = np.random.default_rng(5)
    dist = []
    for i in range(80):
        scene = sim.sample_scene(rng, "day", urban=i % 2 == 0)
        dist += sim.render_scene(rng, scene, settings).ahead_m
    d = np.array(dist)
    seen = d[np.isfinite(d)]
    lo, hi = sim.EXTRAS.ahead_range
    assert len(seen) > 0.6 * len(d)  # clear_road is the minority
    assert seen.min() >= lo and seen.max() <= hi
    assert np.median(seen) < 13  # a 64 px model sees a person there as > 8 px tall


def test_red_lights_ahead_show_their_red_lamp():
    settings = Settings.model_validate({"sim": {"fps": 5, "frames_per_clip": 8}})
    cam = sim.camera_for(settings, "front")
    rng = np.random.default_rng(6)
    for _ in range(100):
        (light,) = _sample_main_actor(rng, "red_light", ego=4.0)
        for t in np.arange(8) / 5:
            if _ahead(light, t, cam, 0.0, sim.EXTRAS) is not None:
                d, x = light.at(t)
                top = _light_top(light.look)
                _, v = cam.project(d, x, top - 0.42, 0.0)  # the bottom of the red (top) lamp
                assert v >= 0  # in the image, not above it


# ---------------------------------------------------------------- 2-D boxes


def test_boxes_lie_in_their_frame_with_a_class_and_a_size():
    settings = small(width=48, height=36, frames_per_clip=6, cameras=["front", "wide"])
    rng = np.random.default_rng(12)
    seen = Counter()
    for i, cond in enumerate(CONDITIONS * 5):
        r = sim.render_scene(rng, sim.sample_scene(rng, cond, urban=i % 2 == 0), settings)
        assert set(r.boxes) == {"front", "wide"}
        for cam, per_frame in r.boxes.items():
            assert len(per_frame) == len(r.frames[cam]) == 6
            for objects in per_frame:
                tracks = [o["track_id"] for o in objects]
                assert len(tracks) == len(set(tracks))  # one box per object and frame
                for o in objects:
                    assert o["label"] in DEFAULT_CLASSES and o["label"] != "clear_road"
                    assert o["w"] >= 1 and o["h"] >= 1
                    assert 0 <= o["x"] and o["x"] + o["w"] <= 48
                    assert 0 <= o["y"] and o["y"] + o["h"] <= 36
                    seen[o["label"]] += 1
    assert set(seen) == set(DEFAULT_CLASSES) - {"clear_road"}


def _covered(box: dict, others: list[dict]) -> float:
    """Share of `box`'s area that lies in the union of `others`, on a quarter-pixel grid."""
    xs = box["x"] + (np.arange(int(box["w"] * 4)) + 0.5) / 4
    ys = box["y"] + (np.arange(int(box["h"] * 4)) + 0.5) / 4
    inside = np.zeros((len(ys), len(xs)), bool)
    for o in others:
        rows = (ys >= o["y"]) & (ys <= o["y"] + o["h"])
        cols = (xs >= o["x"]) & (xs <= o["x"] + o["w"])
        inside |= rows[:, None] & cols
    return float(inside.mean())


def _nearer(boxes: list[dict], scene, t: float, d: float) -> list[dict]:
    """The boxes of the things less than `d` metres away at time t."""
    return [o for o in boxes if scene.actors[int(o["track_id"])].at(t)[0] < d]


def test_a_track_is_one_object_drawn_alone_or_among_others():
    """An object's box (and track_id: its index in the scene) is the one it has when its scene holds
    it alone; among others it only goes missing where nearer things hide it: their boxes cover it."""
    settings = small(width=48, height=36, frames_per_clip=6)
    rng = np.random.default_rng(13)
    kept = hidden = 0
    for i in range(16):
        scene = sim.sample_scene(rng, "day", urban=i % 2 == 0)
        among = sim.render_scene(rng, scene, settings).boxes["front"]
        for k, actor in enumerate(scene.actors):
            only = dataclasses.replace(scene, actors=[actor])
            alone = sim.render_scene(rng, only, settings).boxes["front"]
            for f, (others, by_itself) in enumerate(zip(among, alone, strict=True)):
                mine = [o for o in others if o["track_id"] == str(k)]
                if not by_itself:
                    assert not mine
                    continue
                (box,) = by_itself
                if mine:
                    assert mine == [box | {"track_id": str(k)}]
                    kept += 1
                else:
                    t = f / settings.sim.fps
                    assert _covered(box, _nearer(others, scene, t, actor.at(t)[0])) > 0.5
                    hidden += 1
    assert kept > 100 and hidden > 0, (kept, hidden)


def test_an_object_hidden_behind_a_nearer_one_has_no_box():
    truck = Actor("vehicle", 8.0, 0.0, look={"w": 2.5, "h": 3.4, "body": (200.0, 175.0, 60.0),
                                             "brake": 0.5})  # fmt: skip
    look = {"h": 1.7, "skin": (200.0, 150.0, 110.0), "shirt": (30.0, 60.0, 220.0),
            "legs": (40.0, 40.0, 40.0), "phase": 0.0}  # fmt: skip
    settings = small(width=48, height=36, frames_per_clip=1)
    scene = sim.sample_scene(np.random.default_rng(0), "day", urban=False)
    # 14 m ahead: right behind the truck, then on the verge beside it
    for x, seen in ((0.0, {}), (2.5, {"1": "pedestrian"})):
        actors = [truck, Actor("pedestrian", 14.0, x, look=look)]
        road = dataclasses.replace(scene, curve=0.0, actors=actors)
        (boxes,) = sim.render_scene(np.random.default_rng(0), road, settings).boxes["front"]
        assert {o["track_id"]: o["label"] for o in boxes} == {"0": "vehicle"} | seen


def test_a_red_light_has_a_box_while_it_is_red():
    look = {"overhead": False, "state": "red", "switch": 0.5, "pole": 3.0}  # green from 0.5 s
    scene = sim.sample_scene(np.random.default_rng(0), "day", urban=False)
    road = dataclasses.replace(scene, actors=[Actor("red_light", 12.0, 2.5, look=look)])
    settings = small(width=48, height=36, frames_per_clip=5)  # 5 fps
    r = sim.render_scene(np.random.default_rng(0), road, settings)
    assert r.labels == ["red_light"] * 3 + ["clear_road"] * 2
    labels = [[o["label"] for o in objects] for objects in r.boxes["front"]]
    assert labels == [["red_light"]] * 3 + [[]] * 2


@pytest.mark.parametrize("kind", ["vehicle", "pedestrian", "cyclist", "red_light", "obstacle"])
def test_a_box_is_the_box_of_what_is_painted(monkeypatch, kind):
    """Painted on black and on white, an object shows how much of each pixel it covers, whatever its
    colours: its box is the box of the pixels it covers at least half, to about a pixel, also where
    the frame edge cuts it. Its shadow and a light's pole are not part of it: not painted here."""
    real_box = Painter.box
    monkeypatch.setattr(Painter, "ground", lambda *a, **k: None)
    monkeypatch.setattr(Painter, "box", lambda self, *a, body=True, **k: real_box(self, *a, **k) if body else None)  # fmt: skip
    cam = sim.camera_for(small(width=48, height=36), "front")
    rng = np.random.default_rng(14)
    errors = []
    for _ in range(40):
        (actor,) = _sample_main_actor(rng, kind, ego=4.0)
        t, curve = rng.uniform(0, 1.4), rng.uniform(-0.0015, 0.0015)
        painted = []
        for background in (0, 255):
            albedo = np.full((36, 48, 3), background, np.uint8)
            pt = Painter(cam, curve, albedo, np.full((36, 48), 1e3, np.float32))
            extent = _draw_actor(pt, actor, t)
            painted.append(pt.albedo.astype(np.float32))
        coverage = 1 - (painted[1] - painted[0]).min(axis=2) / 255  # (H, W)
        rows, cols = np.nonzero(coverage >= 0.5)
        box = _box(extent, actor.at(t)[0], pt.depth)
        if box is None:  # nothing of it in view, or a sliver at the frame edge
            assert len(rows) == 0 or min(np.ptp(rows), np.ptp(cols)) == 0
            continue
        x, y, w, h = box
        half_covered = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        errors.append(np.subtract([x, y, x + w, y + h], half_covered))
    errors = np.array(errors)  # (N, 4): left, top, right, bottom edge; box minus painted, pixels
    assert len(errors) > 20
    # thin parts (a wheel, a handlebar) cover under half of their pixels, yet they are in the box
    assert np.abs(errors).max() <= 1.25 and np.abs(errors.mean(axis=0)).max() < 0.5


def test_the_labelled_thing_has_a_box_unless_something_nearer_hides_it():
    """A frame's label is the nearest thing ahead in the first camera's view: that thing has a box of
    the label's class there, unless something nearer (closer than ahead_range, or beside the lane)
    hides it, which is rare. The label's class may then still have a box: another thing's."""
    settings = small(width=48, height=36, frames_per_clip=8)
    cam = sim.camera_for(settings, "front")
    rng = np.random.default_rng(15)
    labelled = hidden = 0
    for i in range(100):
        scene = sim.sample_scene(rng, "day", urban=i % 2 == 0)
        r = sim.render_scene(rng, scene, settings)
        for f, (label, boxes) in enumerate(zip(r.labels, r.boxes["front"], strict=True)):
            if label == "clear_road":
                continue
            t = f / settings.sim.fps
            d, k = min((d, k) for k, a in enumerate(scene.actors)
                       if (d := _ahead(a, t, cam, scene.curve, sim.EXTRAS)) is not None)  # fmt: skip
            labelled += 1
            mine = [o["label"] for o in boxes if o["track_id"] == str(k)]
            if mine:
                assert mine == [label]
                continue
            only = dataclasses.replace(scene, actors=[scene.actors[k]])
            (box,) = sim.render_scene(rng, only, settings).boxes["front"][f]
            assert _covered(box, _nearer(boxes, scene, t, d)) > 0.5
            hidden += 1
    assert labelled > 400 and hidden < 0.01 * labelled, (labelled, hidden)


def test_simulated_clips_carry_the_boxes_of_every_frame(tmp_path):
    settings = small(cameras=["front", "wide"])
    store = open_store(str(tmp_path))
    keys = sim.simulate(store, settings, clips=6, seed=4)
    n = Counter()
    for key in keys:
        # read_clip checks that every box lies in its frame
        for f in read_clip(store.read_bytes(key), classes=settings.classes).frames:
            assert f.boxes is not None  # annotated: () where nothing is in view
            assert all(b.label in DEFAULT_CLASSES and b.label != "clear_road" for b in f.boxes)
            assert all(b.track_id for b in f.boxes)
            n[f.camera] += len(f.boxes)
    assert n["front"] > 0 and n["wide"] > 0
