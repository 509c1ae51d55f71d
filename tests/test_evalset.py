"""The golden set and the evaluation frames of a dataset version."""

from __future__ import annotations

from flywheel import dataset
from flywheel.dataset import append_version
from flywheel.evalset import freeze_golden, load_golden
from flywheel.store import open_store
from tests.test_dataset import CLASSES, dataset_rows


def test_golden_set_is_frozen_once(tmp_path):
    store = open_store(str(tmp_path))
    v1 = append_version(
        store, name="ds", batches={"b1": dataset_rows("b1", clips=20)}, classes=CLASSES
    )
    g1 = freeze_golden(store, "ds", v1, size=10, seed=0)
    test_ids = set(
        store.read_parquet(dataset.shard_keys(v1, "test"), columns=["frame_id"])
        .column(0)
        .to_pylist()
    )
    assert g1["version"] == 1 and len(g1["frame_ids"]) == 10 and set(g1["frame_ids"]) <= test_ids
    v2 = append_version(
        store, name="ds", batches={"b2": dataset_rows("b2", clips=20)}, classes=CLASSES
    )
    assert freeze_golden(store, "ds", v2, size=10, seed=1) == g1 == load_golden(store, "ds")
    g2 = freeze_golden(store, "ds", v2, size=10, seed=1, refreeze=True)
    assert g2["version"] == 2 and g2["dataset_version"] == 2 and load_golden(store, "ds", 1) == g1
