"""The detection side of the Label Studio exchange: rectangles out (pre-filled with the champion's boxes),
exports back as boxes in pixels, the queue and the simulated team. The round trip through a real server is
tests/integration/test_labelstudio.py."""

from __future__ import annotations

import copy

import pyarrow as pa
import pytest

from flywheel import layout
from flywheel.data.schema import BOXES
from flywheel.labeling import labelstudio
from flywheel.labeling.labelstudio import (
    box_result,
    exported_box_task,
    human_boxes,
    human_labels,
    import_box_task,
)
from flywheel.labeling.queue import read_exports, write_queue
from flywheel.sim.annotator import answer_queue
from flywheel.store import LocalStore
from tests.frames import CLASSES, batch_in_store, frames_table

W, H = 640, 480
BOXES_PX = [("vehicle", 10.0, 20.0, 30.5, 40.25), ("pedestrian", 600.0, 400.0, 40.0, 80.0)]


def _task(frame_id="c0/front/0") -> dict:
    return import_box_task({"image": "img.jpg", "frame_id": frame_id}, width=W, height=H)


def _answer(boxes=BOXES_PX, *, when="2026-11-01T10:00:00Z", cancelled=False, id=1, width=W, height=H) -> dict:
    return {"id": id, "result": box_result(boxes, width, height), "was_cancelled": cancelled, "created_at": when}


def _export(*annotations, task=None, task_id=1) -> dict:
    return {"id": task_id, "data": (task or _task())["data"], "annotations": list(annotations)}


def _indexed(boxes):
    return [(CLASSES.index(n), x, y, w, h) for n, x, y, w, h in boxes]


def _percent(item):
    return tuple(item["value"][k] for k in ("x", "y", "width", "height"))


def _assert_boxes(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[0] == w[0] and g[1:] == pytest.approx(w[1:], abs=1e-6)


# ---------------------------------------------------------------- the formats


def test_boxes_round_trip_through_tasks_and_exports_in_pixels():
    champion = [("vehicle", 0.9, 12.0, 18.0, 30.0, 44.0), ("cyclist", 0.5, 300.0, 100.0, 20.0, 60.0)]
    task = import_box_task({"image": "img.jpg", "frame_id": "c0/front/0"}, champion, width=W, height=H,
                           model_version="7")  # fmt: skip
    assert task["data"]["width"] == W and task["data"]["height"] == H
    (pred,) = task["predictions"]
    assert pred["model_version"] == "7" and pred["score"] == pytest.approx(0.7)
    first = pred["result"][0]
    assert first["type"] == "rectanglelabels" and first["score"] == pytest.approx(0.9)
    assert (first["from_name"], first["to_name"], first["original_width"], first["original_height"]) == ("label", "image", W, H)
    assert _percent(first) == pytest.approx((100 * 12 / W, 100 * 18 / H, 100 * 30 / W, 100 * 44 / H))
    assert (first["value"]["rotation"], first["value"]["rectanglelabels"]) == (0, ["vehicle"])
    # an empty prediction is the champion seeing nothing (score 0); None is no prediction at all
    assert import_box_task({"frame_id": "f"}, [], width=W, height=H)["predictions"][0] == {
        "model_version": "None", "score": 0.0, "result": []}
    assert "predictions" not in _task()

    exported = exported_box_task(3, task, BOXES_PX, annotator="ann")
    assert exported["predictions"] == task["predictions"]  # the pre-annotation stays beside the answer
    assert len({r["id"] for r in exported["annotations"][0]["result"]}) == 2  # a region id each
    got = human_boxes([exported], CLASSES)
    assert list(got) == ["c0/front/0"]
    _assert_boxes(got["c0/front/0"], _indexed(BOXES_PX))
    config = labelstudio.box_label_config(CLASSES)
    assert '<RectangleLabels name="label" toName="image">' in config and '<Label value="cyclist"/>' in config
    assert '<Image name="image" value="$image"/>' in config


def test_the_latest_answer_wins_cancelled_ones_are_ignored_and_an_empty_one_means_no_object():
    older = _answer([("vehicle", 1, 2, 3, 4)], when="2026-11-01T10:00:00Z", id=1)
    newer = _answer([("cyclist", 5, 6, 7, 8)], when="2026-11-02T10:00:00Z", id=2)
    cancelled = _answer([("obstacle", 9, 9, 9, 9)], when="2026-11-03T10:00:00Z", cancelled=True, id=3)
    got = human_boxes([[_export(newer, older, cancelled)]], CLASSES)
    _assert_boxes(got["c0/front/0"], _indexed([("cyclist", 5, 6, 7, 8)]))
    # a submitted answer with no rectangle is a label: nothing in the frame (not "no answer")
    empty = _answer([], when="2026-11-04T10:00:00Z", id=4)
    assert human_boxes([[_export(newer, empty)]], CLASSES) == {"c0/front/0": []}
    # only cancelled answers: no label at all
    assert human_boxes([[_export(cancelled)]], CLASSES) == {}
    # across exports, the latest annotation wins; on a tie, the later export
    a, b = _export(older), _export(_answer([("red_light", 1, 1, 1, 1)], when="2026-11-01T10:00:00Z"))
    _assert_boxes(human_boxes([[b], [a]], CLASSES)["c0/front/0"], _indexed([("vehicle", 1, 2, 3, 4)]))
    _assert_boxes(human_boxes([[a], [b]], CLASSES)["c0/front/0"], _indexed([("red_light", 1, 1, 1, 1)]))


def test_pixels_come_from_the_result_size_else_the_task_data_and_slight_overshoot_is_clipped():
    answer = _answer([("vehicle", 10, 20, 30, 40)])
    for item in answer["result"]:
        del item["original_width"], item["original_height"]
    _assert_boxes(human_boxes([[_export(answer)]], CLASSES)["c0/front/0"], _indexed([("vehicle", 10, 20, 30, 40)]))
    # the result's own size wins over the task's (it is the image the person drew on): the task's would double it
    small = _export(_answer([("vehicle", 10, 20, 30, 40)], width=320, height=240))
    _assert_boxes(human_boxes([[small]], CLASSES)["c0/front/0"], _indexed([("vehicle", 10, 20, 30, 40)]))
    # a drag a little past the edge (under 1 % of the image) is clipped to it
    past = _answer([("vehicle", -3.0, 470.0, 50.0, 13.0)])  # x from -0.47 %, bottom at 100.6 %
    _assert_boxes(human_boxes([[_export(past)]], CLASSES)["c0/front/0"], _indexed([("vehicle", 0.0, 470.0, 47.0, 10.0)]))


def _bad(kind: str) -> dict:
    answer = _answer([("vehicle", 10, 20, 30, 40)])
    item, value = answer["result"][0], answer["result"][0]["value"]
    if kind == "unknown class":
        value["rectanglelabels"] = ["tram"]
    elif kind == "zero size":
        value["width"] = 0.0
    elif kind == "outside":
        value["x"] = 97.0  # 97 % + 4.7 % wide: 1.7 % past the right edge
    elif kind == "far outside":
        value["y"] = -50.0
    elif kind == "rotation":
        value["rotation"] = 15.0
    elif kind == "image rotation":
        item["image_rotation"] = 90
    elif kind == "missing sizes":
        del item["original_width"], item["original_height"]
    elif kind == "no class":
        value["rectanglelabels"] = []
    elif kind == "not a number":
        value["x"] = "10"
    elif kind == "classification answer":
        answer["result"] = labelstudio.choice_result("vehicle")
    return answer


BAD = {
    "unknown class": r"unknown class 'tram'; known: \['clear_road', 'vehicle'",
    "zero size": "has no size",
    "outside": "outside the image by more than 1 %",
    "far outside": "outside the image by more than 1 %",
    "rotation": "rotated by 15",
    "image rotation": r"image by 90\)",
    "missing sizes": "no image size",
    "no class": "exactly one class per rectangle",
    "not a number": "'x' is not a number",
    "classification answer": r"\['choices'\] results and no rectangle: not a detection answer",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_rectangle_skips_its_task_naming_it_or_raises(kind):
    task = _task()
    if kind == "missing sizes":
        task["data"] = {k: v for k, v in task["data"].items() if k not in ("width", "height")}
    bad = _export(_bad(kind), task=task, task_id=8)
    good = _export(_answer(), task=_task("c0/front/1"), task_id=9)
    export = {"source": "labeling/done/b1.json", "tasks": [bad, good]}
    skipped = []
    got = human_boxes([export], CLASSES, skipped=skipped)
    assert list(got) == ["c0/front/1"]  # the good answer still counts
    [entry] = skipped
    assert (entry["source"], entry["task"]) == ("labeling/done/b1.json", 8)
    assert entry["error"].startswith("labeling/done/b1.json task 8 annotation 1: ")
    with pytest.raises(ValueError, match=BAD[kind]) as e:
        human_boxes([export], CLASSES)
    assert "labeling/done/b1.json task 8" in str(e.value)


def test_a_bad_file_or_task_is_skipped_as_human_labels_skips_it():
    skipped = []
    exports = [{"source": "done/x.json", "tasks": [], "error": "done/x.json is not valid JSON"},
               {"source": "done/y.json", "tasks": [{"id": 4, "data": {}}, _export(_answer())]}]  # fmt: skip
    assert list(human_boxes(exports, CLASSES, skipped=skipped)) == ["c0/front/0"]
    assert [(s["source"], s["task"]) for s in skipped] == [("done/x.json", None), ("done/y.json", 4)]
    assert "no 'frame_id'" in skipped[1]["error"]
    with pytest.raises(ValueError, match="not valid JSON"):
        human_boxes(exports, CLASSES)


def test_classification_and_detection_exports_do_not_read_as_each_other():
    """A classification project's answers fed to human_boxes are bad tasks, not frames without objects;
    human_labels finds no choice in a box answer, so it labels nothing (as for any answer without one)."""
    choice = {"id": 1, "data": {"frame_id": "c0/front/0"},
              "annotations": [{"id": 1, "result": labelstudio.choice_result("vehicle")}]}  # fmt: skip
    with pytest.raises(ValueError, match="not a detection answer"):
        human_boxes([[choice]], CLASSES)
    assert human_labels([[_export(_answer())]], CLASSES) == {}
    # a box answer beside another control's result (a team's own config) keeps its boxes
    both = _answer([("vehicle", 10, 20, 30, 40)])
    both["result"].append({"type": "textarea", "value": {"text": ["dusk"]}})
    _assert_boxes(human_boxes([[_export(both)]], CLASSES)["c0/front/0"], _indexed([("vehicle", 10, 20, 30, 40)]))


# ---------------------------------------------------------------- queue and annotator


def _frames_with_boxes(n: int, boxes: list) -> pa.Table:
    t = frames_table(n)  # 16 x 12 pixel frames
    return t.set_column(t.schema.get_field_index("boxes"), "boxes", pa.array(boxes, BOXES))


def _box(label, x, y, w, h, track="0"):
    return {"label": label, "x": x, "y": y, "w": w, "h": h, "track_id": track}


def test_a_detection_queue_carries_the_frame_size_and_the_champion_boxes(tmp_path):
    store = LocalStore(tmp_path / "s")
    frames = _frames_with_boxes(4, [None] * 4)
    ids = ["c0/front/1", "c0/front/3"]
    champion = [[("vehicle", 0.8, 1.0, 2.0, 6.0, 4.0)], []]
    key = write_queue(store, "b1", frames, ids, model_version="v2", detection=True, box_predictions=champion)
    tasks = store.read_json(key)
    assert [t["data"]["frame_id"] for t in tasks] == ids
    assert all((t["data"]["width"], t["data"]["height"]) == (16, 12) for t in tasks)
    (pred,) = tasks[0]["predictions"]
    assert pred["model_version"] == "v2" and pred["score"] == pytest.approx(0.8)
    assert _percent(pred["result"][0]) == pytest.approx((100 / 16, 200 / 12, 600 / 16, 400 / 12))
    assert pred["result"][0]["value"]["rectanglelabels"] == ["vehicle"]
    assert tasks[1]["predictions"][0]["result"] == [] and tasks[1]["predictions"][0]["score"] == 0.0
    assert store.exists(f"labeling/images/b1/{ids[0]}.jpg")
    write_queue(store, "b2", frames, ids, detection=True)  # no champion: nothing pre-filled
    assert all("predictions" not in t for t in store.read_json(layout.queue_key("b2")))
    with pytest.raises(ValueError, match="box_predictions has 1 entries for 2"):
        write_queue(store, "b3", frames, ids, detection=True, box_predictions=champion[:1])
    with pytest.raises(ValueError, match="a detection queue takes box_predictions"):
        write_queue(store, "b3", frames, ids, [("vehicle", 0.5)] * 2, detection=True)
    with pytest.raises(ValueError, match="a detection queue takes box_predictions"):
        write_queue(store, "b3", frames, ids, box_predictions=champion)


def test_the_simulated_team_answers_a_detection_queue_with_the_ground_truth_boxes(tmp_path):
    store = LocalStore(tmp_path / "s")
    truth = [[_box("vehicle", 1.0, 2.0, 5.0, 4.0), _box("cyclist", 9.5, 0.0, 6.5, 12.0, "1")], [], None,
             [_box("pedestrian", 3.0, 3.0, 2.0, 6.0)]]  # fmt: skip
    frames = batch_in_store(store, _frames_with_boxes(4, truth))
    ids = frames.column("frame_id").to_pylist()
    write_queue(store, "b1", frames, ids, detection=True)
    out = answer_queue(store, classes=CLASSES, task="detection")
    assert out["answered"] == 4 and out["dropped"] == 0
    got = human_boxes(read_exports(store), CLASSES)  # the labels stage's own parser
    want = [[(b["label"], b["x"], b["y"], b["w"], b["h"]) for b in boxes or []] for boxes in truth]
    for fid, boxes in zip(ids, want, strict=True):
        _assert_boxes(got[fid], _indexed(boxes))  # no box message (None): answered as no object
    # a team that misses every object, and one that misses some, the same ones in every run
    for run, rate in (("all", 1.0), ("half", 0.5), ("half2", 0.5)):
        other = LocalStore(tmp_path / run)
        batch_in_store(other, frames)
        write_queue(other, "b1", frames, ids, detection=True)
        out = answer_queue(other, classes=CLASSES, task="detection", error_rate=rate, seed=3)
        got = human_boxes(read_exports(other), CLASSES)
        if rate == 1.0:
            assert out["dropped"] == 3 and all(v == [] for v in got.values())
    assert human_boxes(read_exports(LocalStore(tmp_path / "half")), CLASSES) == got


def test_the_simulated_team_refuses_boxes_of_unknown_classes(tmp_path):
    store = LocalStore(tmp_path / "s")
    frames = batch_in_store(store, _frames_with_boxes(4, [[_box("tram", 1, 1, 2, 2)], [], [], []]))
    write_queue(store, "b1", frames, ["c0/front/0"], detection=True)
    with pytest.raises(ValueError, match=r"c0/front/0 have classes \['tram'\]"):
        answer_queue(store, classes=CLASSES, task="detection")
    with pytest.raises(ValueError, match="unknown task"):
        answer_queue(store, classes=CLASSES, task="segmentation")


def test_exported_box_task_needs_a_detection_task():
    classification = labelstudio.import_task({"image": "i.jpg", "frame_id": "c0/front/0"})
    with pytest.raises(ValueError, match="no frame width/height"):
        exported_box_task(1, copy.deepcopy(classification), BOXES_PX, annotator="a")
