"""Synthetic frames of scarce conditions: what is made, from what, reproducibly, and through the stage."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pyarrow as pa
import pytest

from flywheel import ingest, layout, sim, stages
from flywheel.config import Settings
from flywheel.data import synth
from flywheel.data.schema import DATASET
from flywheel.store import LocalStore


def scene(seed: int) -> bytes:
    """A JPEG with structure: dark and bright blocks on a mid background."""
    rng = np.random.default_rng(seed)
    img = np.full((24, 32, 3), 110, np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, 18), rng.integers(0, 26)
        img[y:y + 6, x:x + 6] = rng.choice([10, 245])
    return cv2.imencode(".jpg", img)[1].tobytes()


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).astype(np.float32)


def make_rows(day=20, night=3, fog=1, rain=6):
    """Train originals per condition, plus a val and a test frame of day and one augmented train copy."""
    rows, k = [], 0
    for cond, n in (("day", day), ("night", night), ("fog", fog), ("rain", rain)):
        for i in range(n):
            k += 1
            rows.append({"frame_id": f"{cond}{i}/front/0", "clip_id": f"{cond}{i}", "condition": cond, "label": k % 3,
                         "split": "train", "augmentation": "", "image": scene(k)})  # fmt: skip
    rows += [{**rows[0], "frame_id": "v/front/0", "clip_id": "v", "split": "val"},
             {**rows[0], "frame_id": "t/front/0", "clip_id": "t", "split": "test"},
             {**rows[0], "frame_id": "day0/front/0#aug0", "augmentation": "abc@0:0"}]  # fmt: skip
    full = [{"vehicle_id": "v1", "trigger": "random", "camera": "front", "timestamp_ns": 0, "height": 24, "width": 32,
             "label_source": "human", "label_confidence": 1.0, **r} for r in rows]  # fmt: skip
    return pa.Table.from_pylist(full, schema=DATASET)


def test_plan_fills_each_scarce_condition_up_to_the_share_from_the_common_one():
    rows = make_rows()  # 30 train originals: 20 day, 3 night, 1 fog, 6 rain (the copy, val and test do not count)
    assert synth.plan(rows, 0.2) == ("day", {"fog": 5, "night": 3})  # 6 = ceil(0.2 x 30); rain has 6 already
    assert synth.plan(rows, 0.1) == ("day", {"fog": 2})
    assert synth.plan(make_rows(day=10, night=10, fog=10, rain=10), 0.2) == ("day", {})  # ties: by name
    for bad in (0, 1, 1.5):
        with pytest.raises(ValueError, match="synthesized share"):
            synth.plan(rows, bad)


def test_copies_keep_label_clip_and_split_and_are_reproducible():
    rows = make_rows()
    made = synth.synthesize(rows, share=0.2, seed=3)
    assert made.schema == DATASET
    assert Counter(made.column("condition").to_pylist()) == {"fog": 5, "night": 3}
    originals = {r["frame_id"]: r for r in rows.to_pylist()}
    for r in made.to_pylist():
        base, tail = r["frame_id"].split("#")
        src = originals[base]
        assert src["condition"] == "day" and src["split"] == "train" and src["augmentation"] == ""
        assert tail[:-1] == r["condition"] and r["augmentation"] == f"synth-{r['condition']}@3:{tail[-1]}"
        assert (r["label"], r["clip_id"], r["split"], r["height"], r["width"]) == (
            src["label"], src["clip_id"], "train", 24, 32)  # fmt: skip
        assert r["image"] != src["image"]
    assert synth.synthesize(rows, share=0.2, seed=3).equals(made)  # byte-identical
    assert synth.synthesize(rows, share=0.2, seed=4).column("image") != made.column("image")
    assert synth.synthesize(make_rows(day=10, night=10, fog=10, rain=10), share=0.2).num_rows == 0


def test_the_conditions_look_like_themselves():
    """Fog lifts the dark and flattens contrast towards a light airlight; night darkens; rain streaks."""
    src = scene(7)
    before = decode(src)
    out = {c: decode(synth.synthesize_image(src, c, seed=1)) for c in synth.SYNTHESIZERS}
    assert out["fog"].std() < 0.6 * before.std() and out["fog"].min() > before.min() + 40
    assert out["night"].mean() < 0.5 * before.mean()
    assert out["rain"].shape == before.shape and np.abs(out["rain"] - before).mean() > 5
    with pytest.raises(ValueError, match="no synthesizer for condition 'snow'"):
        synth.synthesize_image(src, "snow", seed=0)
    with pytest.raises(ValueError, match="clip7/front/0: image bytes cannot be decoded"):
        synth.synthesize_image(b"not a jpeg", "fog", seed=0, where="clip7/front/0")
    with pytest.raises(ValueError, match=r"synthesis needs columns \['condition'\]"):
        synth.synthesize(make_rows().drop_columns(["condition"]), share=0.2)


def test_the_augmented_stage_adds_them_only_with_the_engine_on(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    base = {"image_size": 32, "sim": {"width": 48, "height": 36, "frames_per_clip": 4,
                                      "conditions_start": {"day": 0.9, "night": 0.0, "rain": 0.0, "fog": 0.1},
                                      "conditions_end": {"day": 0.9, "night": 0.0, "rain": 0.0, "fog": 0.1}},
            "dataset": {"golden_size": 0}, "eval": {"per_slice_frames": 0}}  # fmt: skip
    settings = Settings.model_validate(base)
    store = LocalStore(tmp_path / "store")
    sim.simulate(store, settings, clips=12, seed=0)
    plan = ingest.plan_batch(store, min_clips=1, max_clips=100)
    ingest.commit_batch(store, plan)
    ingest.validate_batch(store, plan.batch_id, settings)
    ingest.write_frames(store, plan.batch_id, settings)
    stages.label_batch(store, settings, plan.batch_id)
    assert stages.augment_batch(store, settings, plan.batch_id)["synthesized"] == {}  # engine off: nothing

    on = Settings.model_validate({**base, "engine": {"enabled": True, "auto_labels": False, "synthesize_share": 0.3}})
    rows = store.read_parquet(layout.augmented_key(plan.batch_id))
    source, expected = synth.plan(rows, 0.3)
    out = stages.augment_batch(store, on, plan.batch_id)
    assert source == "day" and expected and out["synthesized"] == expected
    table = store.read_parquet(layout.augmented_key(plan.batch_id))
    made = table.filter(pa.compute.starts_with(table.column("augmentation"), "synth-"))
    assert Counter(made.column("condition").to_pylist()) == expected
    assert set(made.column("split").to_pylist()) == {"train"}
