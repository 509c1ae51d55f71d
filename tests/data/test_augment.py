"""Offline oversampling of rare groups (train rows only, reproducible) and the online pipeline."""

from __future__ import annotations

import io
from collections import Counter

import albumentations as A
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flywheel.data.augment import (
    DEFAULT_PIPELINE,
    balance_report,
    load_pipeline,
    online_transform,
    oversample,
    pipeline_id,
    plan_copies,
    sample_grid_png,
    save_pipeline,
)  # fmt: skip
from flywheel.data.schema import DATASET


def make_rows(seed=0):
    """Dataset rows: label 0/day is common, label 1/night rare; clips c0..c5 train, c6 val, c7 test."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(8):
        split = "train" if c < 6 else ("val" if c == 6 else "test")
        rare = c in (1, 6, 7)
        for i in range(2 if rare else 6):
            ok, enc = cv2.imencode(".jpg", rng.integers(0, 256, (16, 20, 3), np.uint8))
            rows.append({
                "frame_id": f"c{c}/front/{i}", "clip_id": f"c{c}", "vehicle_id": "v1", "trigger": "random",
                "condition": "night" if rare else "day", "camera": "front", "timestamp_ns": i,
                "image": enc.tobytes(), "height": 16, "width": 20, "label": 1 if rare else 0,
                "label_source": "ground_truth", "label_confidence": 1.0, "split": split,
                "augmentation": "",
            })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=DATASET)


def parquet_bytes(table):
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _names(pipeline) -> list[str]:
    return [t["__class_fullname__"] for t in A.to_dict(pipeline)["transform"]["transforms"]]


def test_default_pipeline_is_albumentations_yaml_without_fog(tmp_path):
    pipeline = load_pipeline()
    names = _names(pipeline)
    assert "RandomFog" not in names and "RandomRain" in names
    # label-preserving by default: nothing that moves, mirrors or scales the scene
    assert not {"HorizontalFlip", "Affine"} & set(names)
    geometric = _names(load_pipeline(geometric=True))
    assert geometric == ["HorizontalFlip", "Affine", *names]
    assert pipeline_id(load_pipeline(geometric=True)) != pipeline_id(pipeline)
    assert "__class_fullname__: Compose" in DEFAULT_PIPELINE.read_text()
    save_pipeline(pipeline, tmp_path / "copy.yaml")
    assert A.to_dict(load_pipeline(tmp_path / "copy.yaml")) == A.to_dict(pipeline)
    (tmp_path / "bad.yaml").write_text("transform: {__class_fullname__: NoSuchTransform}\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_pipeline(tmp_path / "bad.yaml")


def test_plan_reaches_target_share_within_max_copies():
    rows = make_rows()
    # train originals: label 0/day 5 clips x 6 = 30 rows, label 1/night 1 clip x 2 = 2 rows
    assert plan_copies(rows, target_share=0.5, max_copies=4) == {(0, "day"): 0, (1, "night"): 8}
    assert plan_copies(rows, target_share=0.2, max_copies=10) == {(0, "day"): 0, (1, "night"): 4}


def test_oversample_touches_only_train_rows_and_keeps_clip():
    rows = make_rows()
    out = oversample(rows, target_share=0.5, max_copies=4, seed=3)
    assert out.schema == DATASET and out.num_rows == 8
    assert set(out.column("split").to_pylist()) == {"train"}
    assert set(out.column("clip_id").to_pylist()) == {"c1"}  # never c6 (val) / c7 (test)
    assert sorted(out.column("frame_id").to_pylist()) == sorted(
        f"c1/front/{i}#aug{k}" for i in range(2) for k in range(4)
    )
    assert Counter(out.column("augmentation").to_pylist()) == {
        f"{pipeline_id(load_pipeline())}@3:{k}": 2 for k in range(4)
    }
    originals = {r["frame_id"]: r["image"] for r in rows.to_pylist()}
    for r in out.to_pylist():
        assert r["image"] != originals[r["frame_id"].split("#")[0]]
        assert cv2.imdecode(np.frombuffer(r["image"], np.uint8), cv2.IMREAD_COLOR).shape == (
            16,
            20,
            3,
        )
    # rare rows only in val/test: nothing to do, even with a huge target
    held_out = rows.filter(pc.not_equal(rows.column("clip_id"), "c1"))
    assert (
        oversample(held_out, target_share=1.0, max_copies=9, seed=3).column("label").to_pylist()
        == []
    )


def test_oversample_is_reproducible():
    rows = make_rows()
    a = oversample(rows, seed=5)
    b = oversample(rows.take(np.random.default_rng(1).permutation(rows.num_rows)), seed=5)
    assert parquet_bytes(a.sort_by("frame_id")) == parquet_bytes(b.sort_by("frame_id"))
    assert parquet_bytes(a) == parquet_bytes(oversample(rows, seed=5))
    assert a.column("image").to_pylist() != oversample(rows, seed=6).column("image").to_pylist()


def test_balance_report_and_grid():
    rows = make_rows()
    after = pa.concat_tables([rows, oversample(rows, target_share=0.5, max_copies=4, seed=0)])
    report = balance_report(rows, after)
    rare = next(g for g in report["groups"] if g["group"] == {"label": 1, "condition": "night"})
    assert (rare["before"], rare["after"]) == (2, 10)
    assert report["min_share_before"] == pytest.approx(2 / 30, abs=1e-3)
    assert report["min_share_after"] == pytest.approx(10 / 30, abs=1e-3)
    png = sample_grid_png(after.slice(after.num_rows - 5), n=16, classes=["road", "car"], tile=32)
    grid = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert grid.shape == (2 * (32 + 14), 3 * 32, 3)  # 5 tiles -> 3 columns x 2 rows


def test_online_transform_shapes_and_eval_determinism():
    img = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)
    ev = online_transform(16, train=False)
    assert ev(img).shape == (16, 16, 3) and np.array_equal(ev(img), ev(img))
    tr = online_transform(16, train=True)
    tr.set_random_seed(1)
    a = tr(img)
    tr.set_random_seed(1)
    assert a.shape == (16, 16, 3) and np.array_equal(a, tr(img))


@pytest.mark.parametrize("geometric", [False, True])
def test_online_transform_flips_only_where_the_labels_survive_it(geometric):
    img = np.zeros((16, 16, 3), np.uint8)
    img[:, :8] = 200  # bright on the left
    tr = online_transform(16, train=True, geometric=geometric)
    flipped = 0
    for seed in range(40):
        tr.set_random_seed(seed)
        out = tr(img).astype(int)
        flipped += out[:, 8:].mean() > out[:, :8].mean()
    assert (flipped > 0) == geometric  # p=0.5 over 40 seeds: never 0 when on
