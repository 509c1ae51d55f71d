"""Versioned sharded Parquet datasets: stable splits, incremental versions, crash safety."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pyarrow as pa
import pytest

from flywheel.data import dataset
from flywheel.data.dataset import (
    ShardCorruptError,
    append_version,
    latest_version,
    load_manifest,
    split_for,
    to_dataset_rows,
    verify_shards,
)  # fmt: skip
from flywheel.data.diff import diff_versions
from flywheel.data.schema import DATASET, FRAMES
from flywheel.labeling.labels import build_labels
from flywheel.store import open_store

CLASSES = ["clear_road", "vehicle", "pedestrian"]
SHARES = {"train": 0.6, "val": 0.2, "test": 0.2}


def make_frames(batch_id, *, clips=6, per_clip=5, labeled_every=1, seed=0):
    """Frames (schema FRAMES) of tiny random JPEGs; every `labeled_every`-th frame has ground truth."""
    rng = np.random.default_rng([seed, len(batch_id)])
    rows = []
    for c in range(clips):
        clip_id = f"{batch_id}-clip{c}"
        for i in range(per_clip):
            ok, enc = cv2.imencode(".jpg", rng.integers(0, 256, (12, 16, 3), np.uint8))
            rows.append({
                "frame_id": f"{clip_id}/front/{i}", "clip_id": clip_id, "vehicle_id": "v1",
                "trigger": "random" if i % 2 else "hard_brake", "recorded_at": "2026-01-01T00:00:00Z",
                "condition": "day", "camera": "front", "timestamp_ns": i, "image": enc.tobytes(),
                "format": "jpeg", "height": 12, "width": 16,
                "ground_truth": CLASSES[(c + i) % 3] if i % labeled_every == 0 else None,
                "batch_id": batch_id, "clip_key": f"landing/v1/d/{clip_id}.mcap",
            })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=FRAMES)


def dataset_rows(batch_id, **kw):
    frames = make_frames(batch_id, **kw)
    labels, _ = build_labels(frames, classes=CLASSES)
    return to_dataset_rows(frames, labels, CLASSES, SHARES)


def file_hashes(store, prefix="datasets/"):
    return {o.key: hashlib.sha256(store.read_bytes(o.key)).hexdigest() for o in store.list(prefix)}


def rewrite_shard(store, key, how):
    """Change a committed shard behind its manifest's back, as a stray job would."""
    if how == "labels_zeroed":  # a valid Parquet file whose labels all say class 0
        table = store.read_parquet(key)
        i = table.schema.get_field_index("label")
        zeros = pa.array([0] * table.num_rows, pa.int32())
        store.write_parquet(key, table.set_column(i, table.field(i), zeros))
    else:  # one flipped byte: same size, other sha256
        data = bytearray(store.read_bytes(key))
        data[len(data) // 2] ^= 0xFF
        store.write_bytes(key, bytes(data))


def test_split_is_stable_and_follows_shares():
    clips = [f"clip-{i}" for i in range(3000)]
    splits = [split_for(c, SHARES) for c in clips]
    assert splits == [
        split_for(c, dict(reversed(SHARES.items()))) for c in clips
    ]  # key order irrelevant
    share = {s: splits.count(s) / len(clips) for s in SHARES}
    assert share == pytest.approx(SHARES, abs=0.03)
    assert split_for("clip-0", SHARES) == {0: "train", 1: "val", 2: "test"}[
        0 if int(hashlib.sha256(b"clip-0").hexdigest()[:16], 16) / 2**64 < 0.6 else
        1 if int(hashlib.sha256(b"clip-0").hexdigest()[:16], 16) / 2**64 < 0.8 else 2
    ]  # fmt: skip
    with pytest.raises(ValueError, match="sum to 1"):
        split_for("x", {"train": 0.5, "val": 0.1, "test": 0.1})
    with pytest.raises(ValueError, match="keys"):
        split_for("x", {"train": 1.0})


def test_dataset_rows_keep_labeled_frames_and_whole_clips():
    frames = make_frames("b1", clips=20, labeled_every=2)
    labels, _ = build_labels(frames, classes=CLASSES)
    rows = to_dataset_rows(frames, labels, CLASSES, SHARES)
    assert rows.schema == DATASET and rows.num_rows == 20 * 3  # frames 0, 2, 4 of each clip
    assert set(rows.column("augmentation").to_pylist()) == {""}
    clip_split = {}
    for r in rows.to_pylist():
        assert clip_split.setdefault(r["clip_id"], r["split"]) == r["split"]
        assert r["split"] == split_for(r["clip_id"], SHARES)
    assert len(set(clip_split.values())) == 3


def test_append_reuses_old_shards_byte_identical(tmp_path):
    store = open_store(str(tmp_path))
    v1 = append_version(store, name="ds", batches={"b1": dataset_rows("b1"), "b2": dataset_rows("b2")},
                        classes=CLASSES, created_at="t1")  # fmt: skip
    assert (v1["version"], v1["parent"], v1["batches"]) == (1, None, ["b1", "b2"])
    before = file_hashes(store)

    batches = {"b1": dataset_rows("b1", seed=9), "b2": dataset_rows("b2"), "b3": dataset_rows("b3")}
    v2 = append_version(store, name="ds", batches=batches, classes=CLASSES, created_at="t2")
    after = file_hashes(store)
    assert {k: after[k] for k in before} == before  # nothing of v1 rewritten (b1 not re-read)
    new_files = set(after) - set(before)
    assert new_files == {"datasets/ds/v2/manifest.json"} | {
        s["path"] for s in v2["shards"][len(v1["shards"]) :]
    }
    assert all(
        s["path"].startswith("datasets/ds/v2/shards/batch=b3/")
        for s in v2["shards"][len(v1["shards"]) :]
    )
    assert v2["shards"][: len(v1["shards"])] == v1["shards"]
    assert (v2["version"], v2["parent"], v2["batches"], v2["new_batches"]) == (
        2,
        1,
        ["b1", "b2", "b3"],
        ["b3"],
    )
    assert v2["counts"]["rows"] == 3 * 30 and sum(v2["counts"]["split"].values()) == 90
    assert load_manifest(store, "ds") == v2 and latest_version(store, "ds") == 2
    assert verify_shards(store, v2) == []
    # no new batch: no new version
    assert append_version(store, name="ds", batches=batches, classes=CLASSES) == v2
    assert latest_version(store, "ds") == 2

    # no clip in two splits, across versions
    seen = {}
    for s in v2["shards"]:
        for clip in store.read_parquet(s["path"], columns=["clip_id"]).column(0).to_pylist():
            assert seen.setdefault(clip, s["split"]) == s["split"]


def test_shards_roll_at_size_and_use_row_groups(tmp_path):
    store = open_store(str(tmp_path))
    rows = dataset_rows("b1", clips=30, per_clip=10)
    m = append_version(store, name="ds", batches={"b1": rows}, classes=CLASSES,
                       shard_mb=4000 / 2**20, row_group_rows=8)  # fmt: skip
    train = [s for s in m["shards"] if s["split"] == "train"]
    assert len(train) > 1
    assert [s["path"].rsplit("/", 1)[1] for s in train[:2]] == [
        "train-00000.parquet",
        "train-00001.parquet",
    ]
    assert sum(s["rows"] for s in m["shards"]) == rows.num_rows
    for s in m["shards"]:
        md = store.parquet_file(s["path"]).metadata
        assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == s["row_groups"]
        assert all(n == 8 for n in s["row_groups"][:-1])
        image = DATASET.get_field_index("image")
        assert not md.row_group(0).column(image).is_stats_set
        assert md.row_group(0).column(DATASET.get_field_index("label")).is_stats_set
    assert (
        store.read_parquet([s["path"] for s in m["shards"]])
        .sort_by("frame_id")
        .equals(rows.sort_by("frame_id"))
    )


@pytest.mark.parametrize("crash_at", ["manifest", "second_batch"])
def test_crash_before_manifest_leaves_previous_version(tmp_path, monkeypatch, crash_at):
    store = open_store(str(tmp_path))
    v1 = append_version(store, name="ds", batches={"b1": dataset_rows("b1")}, classes=CLASSES)
    more = {"b1": dataset_rows("b1"), "b2": dataset_rows("b2"), "b3": dataset_rows("b3")}

    real = dataset._write_batch_shards
    calls = []

    def flaky_shards(*a, **kw):
        calls.append(kw["batch_id"])
        if len(calls) == 2:
            raise OSError("disk vanished")
        return real(*a, **kw)

    def flaky_manifest(*a, **kw):
        raise OSError("disk vanished")

    with monkeypatch.context() as m:
        if crash_at == "manifest":
            m.setattr(store, "write_json", flaky_manifest)  # the manifest is the one JSON a version writes
        else:
            m.setattr(dataset, "_write_batch_shards", flaky_shards)
        with pytest.raises(OSError, match="disk vanished"):
            append_version(store, name="ds", batches=more, classes=CLASSES)
    assert store.list("datasets/ds/v2/shards/")  # orphan shards were written ...
    assert latest_version(store, "ds") == 1  # ... but not visible
    assert load_manifest(store, "ds") == v1 and verify_shards(store, v1) == []

    v2 = append_version(store, name="ds", batches=more, classes=CLASSES)
    assert (
        v2["version"] == 2 and v2["new_batches"] == ["b2", "b3"] and verify_shards(store, v2) == []
    )
    assert store.read_parquet([s["path"] for s in v2["shards"]]).num_rows == 90


def test_bad_inputs_are_named(tmp_path):
    store = open_store(str(tmp_path))
    append_version(store, name="ds", batches={"b1": dataset_rows("b1")}, classes=CLASSES)
    with pytest.raises(ValueError, match="classes"):
        append_version(store, name="ds", batches={"b2": dataset_rows("b2")}, classes=CLASSES[::-1])
    rows = dataset_rows("b2")
    bad = rows.set_column(
        rows.schema.get_field_index("split"), "split", pa.array(["train", "val"] * 15)
    )
    with pytest.raises(ValueError, match="batch b2: clip .* more than one split"):
        append_version(store, name="ds", batches={"b2": bad}, classes=CLASSES)
    with pytest.raises(ValueError, match="batch b2: dataset rows lack columns"):
        append_version(
            store, name="ds", batches={"b2": rows.drop_columns(["label"])}, classes=CLASSES
        )
    with pytest.raises(FileNotFoundError, match="nothing"):
        load_manifest(store, "nothing")


@pytest.mark.parametrize("how", ["labels_zeroed", "byte_flipped"])
def test_a_rewritten_shard_is_not_reused_by_the_next_version(tmp_path, how):
    store = open_store(str(tmp_path))
    v1 = append_version(store, name="ds", batches={"b1": dataset_rows("b1")}, classes=CLASSES)
    train = next(s["path"] for s in v1["shards"] if s["split"] == "train")
    rewrite_shard(store, train, how)
    with pytest.raises(ShardCorruptError, match=rf"dataset 'ds' v1: shard {train} .*manifest"):
        append_version(store, name="ds", batches={"b2": dataset_rows("b2")}, classes=CLASSES)
    assert latest_version(store, "ds") == 1  # no v2 built on the rewritten shard
    assert verify_shards(store, v1) == [train]


def test_a_relabeled_batch_is_revised_in_the_next_version_and_the_old_one_stays(tmp_path):
    store = open_store(str(tmp_path))
    rows = dataset_rows("b1")
    v1 = append_version(store, name="ds", batches={"b1": rows}, classes=CLASSES, sources={"b1": "labels-a"})
    before = file_hashes(store)
    # the same labels again: nothing to revise, no version
    assert append_version(store, name="ds", batches={"b1": rows}, classes=CLASSES, sources={"b1": "labels-a"}) == v1
    # a person corrected the first three frames after v1 was made
    label = rows.column("label").to_pylist()
    fixed = [(c + 1) % len(CLASSES) if i < 3 else c for i, c in enumerate(label)]
    relabeled = rows.set_column(rows.schema.get_field_index("label"), "label", pa.array(fixed, pa.int32()))
    v2 = append_version(store, name="ds", batches={"b1": relabeled, "b2": dataset_rows("b2")}, classes=CLASSES,
                        sources={"b1": "labels-b", "b2": "labels-c"})  # fmt: skip
    assert (v2["new_batches"], v2["revised_batches"]) == (["b2"], ["b1"])
    assert v2["sources"] == {"b1": "labels-b", "b2": "labels-c"}
    assert all(s["path"].startswith("datasets/ds/v2/") for s in v2["shards"])  # b1's v1 shards swapped out
    assert v2["counts"]["rows"] == 2 * rows.num_rows
    after = file_hashes(store)
    assert {k: after[k] for k in before} == before  # v1 untouched, still whole
    assert verify_shards(store, v1) == [] and verify_shards(store, v2) == []
    read = store.read_parquet([s["path"] for s in v2["shards"] if s["batch"] == "b1"]).sort_by("frame_id")
    want = relabeled.sort_by("frame_id")
    assert read.column("label").to_pylist() == want.column("label").to_pylist()
    old = store.read_parquet([s["path"] for s in v1["shards"]]).sort_by("frame_id")
    assert old.column("label").to_pylist() == rows.sort_by("frame_id").column("label").to_pylist()
    assert diff_versions(store, "ds", 1, 2)["labels_changed"] == 3
