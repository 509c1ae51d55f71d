"""The golden set and the evaluation frames of a dataset version."""

from __future__ import annotations

from flywheel import dataset
from flywheel.dataset import append_version
from flywheel.evalset import grow_golden, latest_golden_version, load_golden
from flywheel.store import open_store
from tests.test_dataset import CLASSES, dataset_rows


def _test_ids(store, manifest) -> set[str]:
    return set(store.read_parquet(dataset.shard_keys(manifest, "test"), columns=["frame_id"]).column(0).to_pylist())


def test_golden_set_grows_append_only_towards_its_size(tmp_path):
    store = open_store(str(tmp_path))
    v1 = append_version(store, name="ds", batches={"b1": dataset_rows("b1", clips=20)}, classes=CLASSES)
    n1 = len(_test_ids(store, v1))
    g1 = grow_golden(store, "ds", v1, size=n1 + 5, seed=0)  # more than v1 has: all of v1's test frames
    assert g1["version"] == 1 and set(g1["frame_ids"]) == _test_ids(store, v1)
    v2 = append_version(store, name="ds", batches={"b2": dataset_rows("b2", clips=20)}, classes=CLASSES)
    g2 = grow_golden(store, "ds", v2, size=n1 + 5, seed=0)
    assert g2["version"] == 2 and g2["frame_ids"][:n1] == g1["frame_ids"]  # nothing old is dropped
    assert len(g2["frame_ids"]) == n1 + 5 and set(g2["frame_ids"]) <= _test_ids(store, v2)
    v3 = append_version(store, name="ds", batches={"b3": dataset_rows("b3", clips=20)}, classes=CLASSES)
    assert grow_golden(store, "ds", v3, size=n1 + 5, seed=0) == g2  # full: no new version
    assert latest_golden_version(store, "ds") == 2 and load_golden(store, "ds", 1) == g1


def test_no_golden_set_when_there_is_nothing_to_add(tmp_path):
    store = open_store(str(tmp_path))
    v1 = append_version(store, name="ds", batches={"b1": dataset_rows("b1", clips=20)}, classes=CLASSES)
    assert grow_golden(store, "ds", v1, size=0, seed=0) is None and latest_golden_version(store, "ds") is None
