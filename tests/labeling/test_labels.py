"""Labels from Label Studio exports, clip ground truth and an auto-labeler, with precedence."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow as pa
import pytest

from flywheel import layout, stages
from flywheel.config import load_settings
from flywheel.data.schema import FRAMES, LABELS
from flywheel.labeling.labels import build_labels, unlabeled_frame_ids
from flywheel.labeling.labelstudio import human_labels
from flywheel.labeling.queue import read_exports
from flywheel.store import open_store

CLASSES = ["clear_road", "vehicle", "pedestrian"]


def make_frames(n=6, truth=("vehicle", None, "pedestrian", None, None, "clear_road")):
    rows = []
    for i in range(n):
        ok, enc = cv2.imencode(".jpg", np.full((8, 8, 3), i * 20, np.uint8))
        rows.append({
            "frame_id": f"c1/front/{i}", "clip_id": "c1", "vehicle_id": "v1", "trigger": "random",
            "recorded_at": "2026-01-01T00:00:00Z", "condition": "day", "camera": "front",
            "timestamp_ns": i, "image": enc.tobytes(), "format": "jpeg", "height": 8, "width": 8,
            "ground_truth": truth[i], "batch_id": "b1", "clip_key": "landing/v1/d/c1.mcap",
        })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=FRAMES)


def annotation(ann_id, choice, *, updated, cancelled=False):
    """One annotation as Label Studio exports it (JSON export format)."""
    return {
        "id": ann_id,
        "completed_by": 1,
        "result": [
            {
                "id": f"r{ann_id}",
                "type": "choices",
                "from_name": "label",
                "to_name": "image",
                "origin": "manual",
                "value": {"choices": [choice]},
            }
        ],  # fmt: skip
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": "2026-01-02T10:00:00.000000Z",
        "updated_at": updated,
        "lead_time": 3.2,
        "task": 0,
    }


def export_file(tasks):
    return json.dumps([
        {"id": tid, "data": {"frame_id": fid, "image": f"/data/local-files/?d={fid}.jpg"},
         "annotations": anns, "predictions": [], "meta": {}, "created_at": "2026-01-02T09:00:00Z",
         "updated_at": "2026-01-02T11:00:00Z", "inner_id": tid, "total_annotations": len(anns),
         "cancelled_annotations": sum(a["was_cancelled"] for a in anns), "project": 1}
        for tid, fid, anns in tasks
    ]).encode()  # fmt: skip


def test_ground_truth_only():
    labels, stats = build_labels(make_frames(), classes=CLASSES)
    assert labels.schema == LABELS
    assert labels.column("frame_id").to_pylist() == ["c1/front/0", "c1/front/2", "c1/front/5"]
    assert labels.column("label").to_pylist() == [1, 2, 0]
    assert set(labels.column("label_source").to_pylist()) == {"ground_truth"}
    assert labels.column("label_confidence").to_pylist() == [1.0, 1.0, 1.0]
    assert stats["unlabeled"] == 3 and stats["ground_truth"] == 3


def test_label_studio_export_file_overrides_ground_truth(tmp_path):
    store = open_store(str(tmp_path))
    store.write_bytes("labeling/done/export-1.json", export_file([
        # newest non-cancelled wins: "pedestrian" (11:00) over "clear_road" (10:00); the
        # cancelled annotation, although newest, is ignored
        (1, "c1/front/0", [annotation(1, "clear_road", updated="2026-01-02T10:00:00Z"),
                           annotation(2, "pedestrian", updated="2026-01-02T11:00:00Z"),
                           annotation(3, "vehicle", updated="2026-01-02T12:00:00Z", cancelled=True)]),
        (2, "c1/front/1", [annotation(4, "vehicle", updated="2026-01-02T10:00:00Z")]),
        (3, "c1/front/3", [annotation(5, "vehicle", updated="2026-01-02T10:00:00Z", cancelled=True)]),
        (4, "other/front/9", [annotation(6, "vehicle", updated="2026-01-02T10:00:00Z")]),
    ]))  # fmt: skip
    store.write_bytes("labeling/done/notes.txt", b"not an export")
    exports = read_exports(store)
    assert [e["source"] for e in exports] == ["labeling/done/export-1.json"]

    labels, stats = build_labels(make_frames(), classes=CLASSES, human_exports=exports)
    got = {r["frame_id"]: (r["label"], r["label_source"]) for r in labels.to_pylist()}
    assert got == {
        "c1/front/0": (2, "human"),  # human beats the clip's ground truth (vehicle)
        "c1/front/1": (1, "human"),
        "c1/front/2": (2, "ground_truth"),
        "c1/front/5": (0, "ground_truth"),
    }
    assert stats["human"] == 2 and stats["human_labels_for_other_frames"] == 1
    assert stats["unlabeled"] == 2  # frames 3 (only a cancelled annotation) and 4
    assert unlabeled_frame_ids(make_frames(), labels) == ["c1/front/3", "c1/front/4"]


def test_a_bad_task_is_skipped_and_named_the_good_ones_count(tmp_path):
    store = open_store(str(tmp_path))
    store.write_bytes("labeling/done/bad.json", export_file([
        (41, "c1/front/0", [annotation(1, "unicorn", updated="2026-01-02T10:00:00Z")]),
        (42, "c1/front/1", [annotation(2, "vehicle", updated="2026-01-02T10:00:00Z")]),
    ]))  # fmt: skip
    labels, stats = build_labels(make_frames(), classes=CLASSES, human_exports=read_exports(store))
    assert stats["human"] == 1 and labels.column("label_source").to_pylist()[1] == "human"
    [skipped] = stats["skipped_exports"]
    assert (skipped["source"], skipped["task"]) == ("labeling/done/bad.json", 41)
    assert "unknown class 'unicorn'" in skipped["error"]
    # the strict parser, where strictness is wanted
    with pytest.raises(ValueError, match=r"labeling/done/bad.json task 41.*unicorn"):
        human_labels(read_exports(store), CLASSES)


def test_a_bad_export_file_is_skipped_and_named(tmp_path):
    store = open_store(str(tmp_path))
    store.write_bytes("labeling/done/broken.json", b"[{not json")
    store.write_bytes("labeling/done/dict.json", b'{"tasks": 3}')
    store.write_bytes("labeling/done/latin1.json", '["caf\xe9"]'.encode("latin-1"))
    exports = read_exports(store)
    assert [(e["source"], e["tasks"]) for e in exports] == [
        ("labeling/done/broken.json", []), ("labeling/done/dict.json", []), ("labeling/done/latin1.json", []),
    ]  # fmt: skip
    assert "broken.json is not valid JSON" in exports[0]["error"]
    assert "dict.json: a Label Studio JSON export is a list of tasks" in exports[1]["error"]
    assert "latin1.json is not valid JSON" in exports[2]["error"]
    _, stats = build_labels(make_frames(), classes=CLASSES, human_exports=exports)
    got = [(x["source"], x["task"]) for x in stats["skipped_exports"]]
    assert got == [(e["source"], None) for e in exports]
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        human_labels(exports, CLASSES)


def test_label_batch_reports_skipped_exports_and_keeps_the_good_answers(tmp_path):
    settings = load_settings(classes=CLASSES, **{"store.root": str(tmp_path / "s")})
    store = open_store(settings.store_root)
    store.write_parquet(layout.frames_key("b1"), make_frames())
    good = [annotation(1, "pedestrian", updated="2026-01-02T10:00:00Z")]
    store.write_bytes("labeling/done/a-good.json", export_file([(1, "c1/front/1", good)]))
    store.write_bytes("labeling/done/b-not-json.json", b"<html>")
    store.write_bytes("labeling/done/c-not-a-list.json", b"7")
    bad_tasks = json.loads(export_file([(1, "c1/front/3", good), (2, "c1/front/4", good)]))
    del bad_tasks[0]["data"]["frame_id"]
    bad_tasks[1]["annotations"][0]["result"][0]["value"] = "pedestrian"  # not {"choices": [...]}
    bad_tasks.append({"id": 3, "data": {"frame_id": "c1/front/4"},
                      "annotations": [annotation(2, "unicorn", updated="2026-01-02T10:00:00Z")]})  # fmt: skip
    store.write_bytes("labeling/done/d-bad-tasks.json", json.dumps(bad_tasks).encode())

    stats = stages.label_batch(store, settings, "b1")
    assert stats["human"] == 1  # a-good.json still counts
    got = [(x["source"], x["task"]) for x in stats["skipped_exports"]]
    assert got == [("labeling/done/b-not-json.json", None), ("labeling/done/c-not-a-list.json", None),
                   ("labeling/done/d-bad-tasks.json", 1), ("labeling/done/d-bad-tasks.json", 2),
                   ("labeling/done/d-bad-tasks.json", 3)]  # fmt: skip
    errors = [x["error"] for x in stats["skipped_exports"]]
    assert "no 'frame_id'" in errors[2] and "choices" in errors[3] and "unicorn" in errors[4]
    assert all(x["source"] in e for x, e in zip(stats["skipped_exports"], errors, strict=True))


def test_auto_labels_fill_only_unlabeled_frames_above_threshold():
    frames = make_frames()  # frames 0, 2, 5 carry ground truth
    probs = np.full((6, 3), 0.25, np.float32)
    probs[:, 1] = 0.5  # unsure: class 1 at 0.5
    probs[1] = [0.02, 0.95, 0.03]  # sure of class 1
    probs[0] = [0.0, 0.0, 1.0]  # sure, but the frame has ground truth: the model never overrides it
    labels, stats = build_labels(frames, classes=CLASSES, auto_probs=probs, auto_threshold=0.9)
    row = [r for r in labels.to_pylist() if r["label_source"] == "auto"]
    assert row == [{"frame_id": "c1/front/1", "label": 1, "label_source": "auto",
                    "label_confidence": pytest.approx(0.95)}]  # fmt: skip
    assert stats["auto"] == 1 and stats["auto_below_threshold"] == 2 and stats["unlabeled"] == 2
    assert labels.filter(pa.compute.equal(labels.column("frame_id"), "c1/front/0")).column("label")[0].as_py() == 1


def test_auto_probs_shape_is_checked():
    with pytest.raises(ValueError, match="auto_probs must have shape"):
        build_labels(make_frames(), classes=CLASSES, auto_probs=np.ones((1, 3)))


def test_unknown_ground_truth_class():
    frames = make_frames(truth=("tractor", None, None, None, None, None))
    with pytest.raises(ValueError, match="c1/front/0.*tractor"):
        build_labels(frames, classes=CLASSES)
