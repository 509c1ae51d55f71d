"""The golden set and the evaluation frames of a dataset version."""

from __future__ import annotations

import pyarrow as pa
import pytest

from flywheel import layout
from flywheel.data import dataset
from flywheel.data.dataset import append_version
from flywheel.evaluation import evalset
from flywheel.evaluation.evalset import grow_golden, latest_golden_version, load_golden
from flywheel.store import open_store
from tests.data.test_dataset import CLASSES, dataset_rows


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


def test_test_clips_are_reserved_while_a_slice_is_short_and_never_beyond_the_share():
    from collections import Counter

    from flywheel.config import EvalSettings
    from flywheel.evaluation.evalset import reserve_test_clips

    rows = dataset_rows("b1", clips=40)
    before = Counter(rows.column("split").to_pylist())
    out, reserved = reserve_test_clips(rows, Counter(), EvalSettings(per_slice_frames=1000, max_reserved_share=0.25))
    after = Counter(out.column("split").to_pylist())
    train_clips = {c for c, s in zip(rows.column("clip_id").to_pylist(), rows.column("split").to_pylist(), strict=True) if s == "train"}
    assert reserved["clips"] == int(0.25 * len(train_clips)) > 0  # every slice is short: the share caps it
    assert after["test"] == before["test"] + reserved["frames"] and after["val"] == before["val"]  # val untouched
    per_clip = {}
    for c, s in zip(out.column("clip_id").to_pylist(), out.column("split").to_pylist(), strict=True):
        per_clip.setdefault(c, set()).add(s)
    assert all(len(s) == 1 for s in per_clip.values())  # whole clips move: no clip in two splits
    full = Counter({k: 10**6 for k in ("condition=day,class=0", "condition=day,class=1", "condition=day,class=2",
                                       "trigger=random", "trigger=hard_brake")})  # fmt: skip
    same, none = reserve_test_clips(rows, full, EvalSettings(per_slice_frames=1000))
    assert none == {"clips": 0, "frames": 0} and same.equals(rows)  # every slice has enough: the hash split stands


def test_test_counts_include_the_latest_version_and_older_waiting_batches(tmp_path):
    from flywheel.evaluation.evalset import test_counts

    store = open_store(str(tmp_path))
    v1 = append_version(store, name="ds", batches={"b1": dataset_rows("b1", clips=20)}, classes=CLASSES)
    counts = test_counts(store, "ds", "b9")
    test_frames = store.read_parquet(dataset.shard_keys(v1, "test"), columns=["trigger"]).column(0).to_pylist()
    assert sum(n for k, n in counts.items() if k.startswith("trigger=")) == len(test_frames) > 0


def _auto_labeled(rows):
    """`rows` as if the champion had labeled every frame itself."""
    i = rows.column_names.index("label_source")
    return rows.set_column(i, rows.field(i), pa.array(["auto"] * rows.num_rows, rows.field(i).type))


def test_the_fixed_set_is_frozen_from_the_first_version_with_enough_labeled_test_frames(tmp_path):
    from flywheel.evaluation.evalset import fixed_set

    store = open_store(str(tmp_path))
    # v1's test frames carry only auto labels: they count for nothing, however many there are
    v1 = append_version(store, name="ds", batches={"b1": _auto_labeled(dataset_rows("b1", clips=20))}, classes=CLASSES)
    b2 = dataset_rows("b2", clips=20)
    least = sum(s == "test" for s in b2.column("split").to_pylist())
    assert len(_test_ids(store, v1)) >= least > 0
    assert fixed_set(store, "ds", v1, min_frames=least) is None
    assert not store.exists(layout.fixed_set_key("ds"))  # "not yet" writes nothing
    v2 = append_version(store, name="ds", batches={"b2": b2}, classes=CLASSES)
    v3 = append_version(store, name="ds", batches={"b3": dataset_rows("b3", clips=20)}, classes=CLASSES)
    # first asked at v3, it is v2's labeled test frames: the first version that has enough
    made = fixed_set(store, "ds", v3, min_frames=least)
    assert made["dataset_version"] == 2 and made["frames"] == least
    assert made["frame_ids"] == sorted(_test_ids(store, v2) - _test_ids(store, v1))
    v4 = append_version(store, name="ds", batches={"b4": dataset_rows("b4", clips=20)}, classes=CLASSES)
    assert len(_test_ids(store, v4)) > len(_test_ids(store, v3))  # later versions add test frames ...
    assert fixed_set(store, "ds", v4, min_frames=least) == made  # ... the fixed set keeps its frames
    assert len(evalset.labeled_test_frames(store, v4)) > least  # v3 or v4 would make another set now ...
    assert fixed_set(store, "ds", v4, min_frames=least + 1) == made  # ... but it is not made again
    assert store.read_json(layout.fixed_set_key("ds")) == made
    with pytest.raises(ValueError, match="min_frames must be >= 1"):
        fixed_set(store, "ds", v4, min_frames=0)
