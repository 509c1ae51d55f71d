"""Dataset diffs: what a version adds to another, from real versions in a store, and the command."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.data.dataset import append_version
from flywheel.data.diff import diff_versions, markdown
from flywheel.store import open_store
from tests.data.test_dataset import CLASSES, dataset_rows


def _versions(store):
    """v1: batch b1 (6 clips x 5 frames); v2: + batch b2 (4 clips), one of whose rows relabels a frame of b1."""
    b1 = dataset_rows("b1")
    append_version(store, name="ds", batches={"b1": b1}, classes=CLASSES)
    b2 = dataset_rows("b2", clips=4)
    first = b1.slice(0, 1)  # the same frame, another label: a human correction arriving in a later batch
    relabeled = first.set_column(first.schema.get_field_index("label"), "label",
                                 pa.array([(first.column("label")[0].as_py() + 1) % 3], pa.int32()))  # fmt: skip
    append_version(store, name="ds", batches={"b2": pa.concat_tables([b2, relabeled])}, classes=CLASSES)
    return b1, b2, first


def test_diff_counts_what_a_version_adds_and_which_labels_changed(tmp_path):
    store = open_store(str(tmp_path))
    b1, b2, first = _versions(store)
    d = diff_versions(store, "ds", 1, 2)
    assert (d["before"], d["after"]) == (1, 2) and d["rows"] == {"before": 30, "after": 51}
    assert d["clips_added"] == 4 and d["frames_added"] == 20 and d["frames_removed"] == 0
    assert [x["batch"] for x in d["batches_added"]] == ["b2"] and d["batches_removed"] == []
    assert d["batches_added"][0]["rows"] == 21 and d["batches_added"][0]["clips"] == 5
    fid = first.column("frame_id")[0].as_py()
    old = CLASSES[first.column("label")[0].as_py()]
    assert d["labels_changed"] == 1
    assert d["changed"] == [{"frame_id": fid, "before": old, "after": CLASSES[(CLASSES.index(old) + 1) % 3]}]
    added = pc.value_counts(pa.concat_tables([b2, first]).column("split")).to_pylist()
    for item in added:  # per split: exactly the rows of the new batch
        assert d["counts"]["split"][item["values"]]["delta"] == item["counts"]
    assert sum(c["delta"] for c in d["counts"]["class"].values()) == 21
    md = markdown(d)
    assert md.startswith("**ds v1 → v2**: 30 → 51 rows; +4 clips, +20 frames") and fid in md
    backwards = diff_versions(store, "ds", 2, 1)  # either order: "before" is the first
    assert backwards["frames_removed"] == 20 and backwards["counts"]["split"]["train"]["delta"] <= 0


def test_diff_names_what_cannot_be_compared(tmp_path):
    store = open_store(str(tmp_path))
    _versions(store)
    with pytest.raises(ValueError, match="has no version v7 \\(the latest is v2\\)"):
        diff_versions(store, "ds", 1, 7)
    with pytest.raises(ValueError, match="two different versions"):
        diff_versions(store, "ds", 2, 2)


def test_flywheel_diff_command(tmp_path):
    store = open_store(str(tmp_path / "store"))
    _versions(store)
    args = ["diff", "v1", "2", "--dataset", "ds", "--json"]
    out = CliRunner().invoke(main, args, env={"FLYWHEEL_HOME": str(tmp_path / "store")})
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["clips_added"] == 4
    bad = CliRunner().invoke(main, ["diff", "v1", "latest", "--dataset", "ds"],
                             env={"FLYWHEEL_HOME": str(tmp_path / "store")})  # fmt: skip
    assert bad.exit_code != 0 and "'latest' is not a dataset version" in bad.output
