"""The Label Studio sync's parts that need no server: image references per store, which batches'
answers are not in their labels yet, and the labeling config read back. The round trip
through a real server is tests/integration/test_labelstudio.py."""

import json
import time

import pyarrow as pa
import pytest
import requests

from flywheel import layout
from flywheel.config import load_settings
from flywheel.data.schema import LABELS
from flywheel.labeling import labelstudio
from flywheel.labeling.labelstudio_sync import (
    LabelStudioSync,
    _choices,
    _export_task,
    _tags,
    expires_at,
    from_settings,
    stale,
    unfolded,
)
from flywheel.labeling.queue import write_queue
from flywheel.store import open_store
from tests.conftest import jpeg

CLASSES = ["car", "truck"]


def _frames(n=3):
    return pa.table({
        "frame_id": [f"c1/front/{i}" for i in range(n)], "clip_id": ["c1"] * n, "camera": ["front"] * n,
        "condition": ["day"] * n, "trigger": ["random"] * n, "image": [jpeg(i) for i in range(n)],
        "format": ["jpeg"] * n,
    })  # fmt: skip


def _sync(**kw):
    return LabelStudioSync("http://127.0.0.1:9", "token", title="t", classes=CLASSES, **kw)  # never contacted here


def test_images_are_local_files_urls_for_a_local_store_and_presigned_urls_for_s3(tmp_path, s3_root, s3_endpoint):
    local = open_store(str(tmp_path / "store"))
    write_queue(local, "b1", _frames(), ["c1/front/0"])
    [task] = local.read_json(layout.queue_key("b1"))
    assert _sync().image_ref(local, task) == "/data/local-files/?d=b1/c1/front/0.jpg"  # root: the images alone
    assert _sync(document_root=tmp_path).image_ref(local, task) == "/data/local-files/?d=store/labeling/images/b1/c1/front/0.jpg"

    s3 = open_store(s3_root, endpoint_url=s3_endpoint)
    write_queue(s3, "b1", _frames(), ["c1/front/1"])
    [task] = s3.read_json(layout.queue_key("b1"))
    url = _sync().image_ref(s3, task)
    assert url.startswith(s3_endpoint) and "Signature" in url
    assert requests.get(url, timeout=30).content == jpeg(1)  # what the annotator's browser fetches


def test_presigned_urls_live_the_set_lifetime_are_renewed_past_half_and_stay_out_of_exports(s3_root, s3_endpoint):
    s3 = open_store(s3_root, endpoint_url=s3_endpoint)
    write_queue(s3, "b1", _frames(), ["c1/front/2"])
    [task] = s3.read_json(layout.queue_key("b1"))
    sync = _sync(url_lifetime_s=3600)
    before = time.time()
    url = sync.image_ref(s3, task)
    end = expires_at(url)
    assert end is not None and before - 2 <= end - 3600 <= time.time() + 1  # an hour, not a week
    assert expires_at("/data/local-files/?d=labeling/images/b1/c1/front/2.jpg") is None
    served = {"id": 7, "data": {**task["data"], "image": url}, "annotations": []}
    assert stale([served], 3600, now=end - 3600 + 60) == []  # fresh
    assert stale([served], 3600, now=end - 1700) == [served]  # under half its life left: renewed
    answered = {**served, "annotations": [{"result": []}]}
    assert stale([answered], 3600, now=end + 10) == []  # answered: nobody needs the image any more
    # an export names the image as queued (the store's key), never by a URL that opens it
    exported = _export_task(answered, {task["data"]["frame_id"]: task["data"]["image"]})
    assert exported["data"]["image"] == task["data"]["image"] and "Signature" not in json.dumps(exported)
    with pytest.raises(ValueError, match="url_lifetime_s"):
        _sync(url_lifetime_s=8 * 24 * 3600)


def test_unfolded_lists_batches_whose_labels_lack_an_answer(tmp_path):
    store = open_store(str(tmp_path))
    write_queue(store, "b1", _frames(), ["c1/front/0", "c1/front/1"])
    tasks = store.read_json(layout.queue_key("b1"))

    def labels(source_of_0: str, label_of_0: int):
        t = pa.table({"frame_id": ["c1/front/0", "c1/front/2"], "label": [label_of_0, 0],
                      "label_source": [source_of_0, "ground_truth"], "label_confidence": [1.0, 1.0]}, schema=LABELS)  # fmt: skip
        store.write_parquet(layout.labels_key("b1"), t)

    labels("ground_truth", 0)
    assert unfolded(store, CLASSES) == []  # no answers yet
    store.write_json(layout.done_key("b1"), [labelstudio.exported_task(1, tasks[0], "truck", annotator="a")])
    [late] = unfolded(store, CLASSES)
    assert (late.batch_id, late.tasks) == ("b1", 1)
    labels("human", 0)  # a human label, but not the one given: still to fold in
    assert [a.batch_id for a in unfolded(store, CLASSES)] == ["b1"]
    labels("human", 1)
    assert unfolded(store, CLASSES) == []


def test_the_labeling_config_reads_back_as_its_choices():
    assert _choices(labelstudio.label_config(CLASSES)) == CLASSES
    with pytest.raises(ValueError, match="not XML"):
        _choices("<View>")


def test_a_detection_config_reads_back_as_its_rectangle_labels_and_its_kind():
    boxes, choices = labelstudio.box_label_config(CLASSES), labelstudio.label_config(CLASSES)
    assert _choices(boxes) == CLASSES
    assert "RectangleLabels" in _tags(boxes) and "Choices" not in _tags(boxes)
    assert "Choices" in _tags(choices) and "RectangleLabels" not in _tags(choices)


def test_the_settings_task_picks_the_projects_kind(monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "token")
    url = {"labelstudio.url": "http://127.0.0.1:9"}  # never contacted here
    assert from_settings(load_settings(**url)).task == "classification"
    assert from_settings(load_settings(**url, task="detection")).task == "detection"
    with pytest.raises(ValueError, match="unknown task 'segmentation'"):
        _sync(task="segmentation")


def test_an_export_keeps_rectangles_whole():
    result = labelstudio.box_result([("car", 4.0, 6.0, 20.0, 10.0)], 64, 48)
    served = {"id": 3, "data": {"frame_id": "c1/front/0", "image": "/data/local-files/?d=x.jpg", "width": 64,
                                "height": 48},
              "annotations": [{"id": 9, "result": result, "was_cancelled": False, "created_at": "2026-01-01T00:00:00Z",
                               "lead_time": 4.2}]}  # fmt: skip
    exported = _export_task(served, {"c1/front/0": "labeling/images/b1/c1/front/0.jpg"})
    assert exported["annotations"][0]["result"] == result and "lead_time" not in exported["annotations"][0]
    [(cls, *box)] = labelstudio.human_boxes([[exported]], CLASSES)["c1/front/0"]
    assert cls == 0 and box == pytest.approx([4.0, 6.0, 20.0, 10.0])
