"""The training reader: rank x worker coverage, equal counts, deterministic order, resume."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from flywheel.data import dataset
from flywheel.data.dataset import ShardCorruptError, append_version
from flywheel.data.reader import ShardReader, load_arrays
from flywheel.data.schema import DATASET
from flywheel.store import open_store

CLASSES = ["a", "b", "c"]
N_TRAIN, N_VAL = 96, 20
S = 8  # model input side in these tests


def make_rows(batch_id, n_train, n_val, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "val"
        ok, enc = cv2.imencode(".jpg", rng.integers(0, 256, (12, 16, 3), np.uint8))
        rows.append({
            "frame_id": f"{batch_id}-{split}/front/{i:03d}", "clip_id": f"{batch_id}-{split}",
            "vehicle_id": "v1", "trigger": "random", "condition": "day", "camera": "front",
            "timestamp_ns": i, "image": enc.tobytes(), "height": 12, "width": 16, "label": i % 3,
            "label_source": "ground_truth", "label_confidence": 1.0, "split": split, "augmentation": "",
        })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=DATASET)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    store = open_store(str(tmp_path_factory.mktemp("store")))
    batches = {
        "b1": make_rows("b1", 40, 12, 0),
        "b2": make_rows("b2", 56, 8, 1),
    }  # 96 train, 20 val
    manifest = append_version(store, name="ds", batches=batches, classes=CLASSES, row_group_rows=8)
    return store, manifest


def read_ids(store, manifest, *, num_workers=0, batch_size=4, **kw):
    reader = ShardReader(store, manifest, image_size=S, batch_size=batch_size, **kw)
    loader = DataLoader(reader, batch_size=batch_size, num_workers=num_workers)
    return [f for batch in loader for f in batch["frame_id"]]


@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (2, 0), (2, 2), (3, 1)])
def test_every_sample_once_per_epoch_and_equal_counts(ds, world_size, num_workers):
    store, manifest = ds
    per_rank = [read_ids(store, manifest, rank=r, world_size=world_size, num_workers=num_workers)
                for r in range(world_size)]  # fmt: skip
    assert len({len(ids) for ids in per_rank}) == 1  # equal counts: DDP never waits
    seen = Counter(f for ids in per_rank for f in ids)
    assert len(seen) == N_TRAIN and set(seen.values()) == {1}


def test_remainder_dropped_for_train_padded_for_eval(ds):
    store, manifest = ds
    train = [read_ids(store, manifest, rank=r, world_size=5) for r in range(5)]
    assert [len(t) for t in train] == [N_TRAIN // 5] * 5
    assert len(set().union(*train)) == 5 * (N_TRAIN // 5)  # no duplicates, 1 sample dropped
    val = [read_ids(store, manifest, split="val", shuffle=False, train_aug=False, rank=r, world_size=3)
           for r in range(3)]  # fmt: skip
    assert [len(v) for v in val] == [7, 7, 7]  # 20 -> padded to 21 by repeating the first
    assert len(set().union(*val)) == N_VAL


def test_order_is_the_same_for_any_num_workers(ds):
    store, manifest = ds
    orders = []
    for nw in (0, 1, 2):
        reader = ShardReader(store, manifest, image_size=S, batch_size=4, seed=7)
        batches = list(DataLoader(reader, batch_size=4, num_workers=nw))
        orders.append(
            ([f for b in batches for f in b["frame_id"]], torch.cat([b["image"] for b in batches]))
        )
    assert orders[0][0] == orders[1][0] == orders[2][0]
    assert torch.equal(orders[0][1], orders[2][1])  # augmentation seeded per sample, not per worker


def test_shuffle_is_deterministic_per_epoch(ds):
    store, manifest = ds
    reader = ShardReader(store, manifest, image_size=S, seed=3)
    e0 = [s["frame_id"] for s in reader]
    assert e0 == [s["frame_id"] for s in reader]
    reader.set_epoch(1)
    e1 = [s["frame_id"] for s in reader]
    assert e1 != e0 and sorted(e1) == sorted(e0)
    assert e0 != sorted(e0)  # shuffled within and across row groups
    other = ShardReader(store, manifest, image_size=S, seed=4)
    assert [s["frame_id"] for s in other] != e0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_gives_the_same_remaining_order(ds, num_workers):
    store, manifest = ds
    full = ShardReader(store, manifest, image_size=S, batch_size=4, seed=2)
    full.set_epoch(3)
    expected = [
        f for b in DataLoader(full, batch_size=4, num_workers=num_workers) for f in b["frame_id"]
    ]

    reader = ShardReader(store, manifest, image_size=S, batch_size=4, seed=2)
    reader.set_epoch(3)
    it = iter(DataLoader(reader, batch_size=4, num_workers=num_workers))
    taken = [f for _ in range(5) for f in next(it)["frame_id"]]
    state = reader.state_dict(samples=None if num_workers == 0 else 5 * 4)
    del it
    assert state["epoch"] == 3 and state["consumed"] == 20

    resumed = ShardReader(store, manifest, image_size=S, batch_size=4, seed=2)
    resumed.load_state_dict(state)
    rest = [
        f for b in DataLoader(resumed, batch_size=4, num_workers=num_workers) for f in b["frame_id"]
    ]
    assert taken + rest == expected
    # resumed twice: the consumed count keeps adding up
    again = ShardReader(store, manifest, image_size=S, batch_size=4, seed=2)
    again.load_state_dict(state)
    it = iter(again)
    [next(it) for _ in range(6)]
    assert again.state_dict()["consumed"] == 26
    resumed.set_epoch(4)  # the next epoch starts from its beginning
    assert len([s for s in resumed]) == N_TRAIN
    with pytest.raises(ValueError, match="seed"):
        ShardReader(store, manifest, image_size=S, seed=9).load_state_dict(state)


def test_samples_are_decoded_rows(ds):
    store, manifest = ds
    table = store.read_parquet([s["path"] for s in manifest["shards"]])
    rows = {r["frame_id"]: r for r in table.to_pylist()}
    reader = ShardReader(store, manifest, split="val", image_size=S, shuffle=False, train_aug=False)
    batch = next(iter(DataLoader(reader, batch_size=5)))
    assert batch["image"].shape == (5, 3, S, S) and batch["image"].dtype == torch.uint8
    assert batch["label"].dtype == torch.int64
    for i, fid in enumerate(batch["frame_id"]):
        r = rows[fid]
        bgr = cv2.imdecode(np.frombuffer(r["image"], np.uint8), cv2.IMREAD_COLOR)
        want = cv2.resize(
            cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (S, S), interpolation=cv2.INTER_LINEAR
        )
        assert np.array_equal(batch["image"][i].numpy(), want.transpose(2, 0, 1))
        assert int(batch["label"][i]) == r["label"] and batch["clip_id"][i] == r["clip_id"]
        assert (batch["trigger"][i], batch["condition"][i], batch["camera"][i]) == (
            "random",
            "day",
            "front",
        )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batched_reader_yields_the_same_batches_as_collated_samples(ds, num_workers):
    """batched=True: the same images (train augmentation included), labels and order as the per-sample reader
    through a collating DataLoader, as many batches as the DataLoader counts, and no strings when meta=False."""
    store, manifest = ds
    kw = dict(image_size=S, batch_size=10, seed=3)  # 96 train rows: 9 full batches and one of 6
    samples = DataLoader(ShardReader(store, manifest, **kw), batch_size=10, num_workers=num_workers)
    batches = DataLoader(ShardReader(store, manifest, batched=True, **kw), batch_size=None, num_workers=num_workers)
    plain = list(samples)
    whole = list(batches)
    assert len(batches) == len(samples) == len(plain) == len(whole) == 10
    for a, b in zip(plain, whole, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        assert a["frame_id"] == b["frame_id"]
    assert [len(b["label"]) for b in whole] == [10] * 9 + [6]
    bare = next(iter(ShardReader(store, manifest, batched=True, meta=False, **kw)))
    assert set(bare) == {"image", "label"} and bare["image"].dtype == torch.uint8 and bare["label"].dtype == torch.int64


def test_load_arrays_for_split_and_frame_ids(ds):
    store, manifest = ds
    images, labels, meta = load_arrays(store, manifest, split="val", image_size=S)
    assert (
        images.shape == (N_VAL, 3, S, S) and images.dtype == np.uint8 and labels.dtype == np.int64
    )
    assert meta["frame_id"] == sorted(meta["frame_id"]) and len(set(meta["frame_id"])) == N_VAL
    golden = ["b2-train/front/003", "b1-val/front/045", "b1-train/front/000"]
    g_images, g_labels, g_meta = load_arrays(store, manifest, frame_ids=golden, image_size=S)
    assert g_meta["frame_id"] == golden and g_labels.tolist() == [0, 0, 0]
    i = meta["frame_id"].index("b1-val/front/045")
    assert np.array_equal(g_images[1], images[i])
    with pytest.raises(ValueError, match="nope"):
        load_arrays(store, manifest, frame_ids=["nope"], image_size=S)


def test_a_rewritten_shard_fails_the_reader_loudly(tmp_path):
    store = open_store(str(tmp_path))
    batches = {"b1": make_rows("b1", 16, 8, 0)}
    manifest = append_version(store, name="ds", batches=batches, classes=CLASSES)
    val = next(s["path"] for s in manifest["shards"] if s["split"] == "val")
    data = bytearray(store.read_bytes(val))
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    store.write_bytes(val, bytes(data))
    assert len(ShardReader(store, manifest, image_size=S)) == 16  # the train shards are intact
    with pytest.raises(ShardCorruptError, match=rf"dataset 'ds' v1: shard {val} .*sha256"):
        ShardReader(store, manifest, split="val", image_size=S)
    with pytest.raises(ShardCorruptError, match=val):
        load_arrays(store, manifest, split="val", image_size=S)
    frames = ["b1-train/front/000", "b1-val/front/020"]
    with pytest.raises(ShardCorruptError, match=val):  # a frame list: the shards holding its frames
        load_arrays(store, manifest, frame_ids=frames, image_size=S)
    _, labels, _ = load_arrays(store, manifest, frame_ids=["b1-train/front/001"], image_size=S)
    assert labels.tolist() == [1]


def test_shards_are_hashed_once_per_process(tmp_path, monkeypatch):
    store = open_store(str(tmp_path))
    batches = {"b1": make_rows("b1", 16, 8, 0)}
    manifest = append_version(store, name="ds", batches=batches, classes=CLASSES)
    hashed = []
    real = dataset._sha256
    monkeypatch.setattr(dataset, "_sha256", lambda st, key: hashed.append(key) or real(st, key))
    monkeypatch.setattr(dataset, "_verified", set())  # as in a fresh process
    train = [s["path"] for s in manifest["shards"] if s["split"] == "train"]
    reader = ShardReader(store, manifest, image_size=S)
    for epoch in range(3):
        reader.set_epoch(epoch)
        assert len(list(reader)) == 16
    ShardReader(store, manifest, image_size=S)
    assert hashed == train  # once each, streamed, however many epochs and readers
