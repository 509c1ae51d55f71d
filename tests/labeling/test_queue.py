"""The human queue: Label Studio tasks out and exports back, the simulated team, the ground-truth wall,
what goes to people within the budget."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from flywheel import layout
from flywheel.config import EngineSettings
from flywheel.deployment.champion import Champion
from flywheel.labeling.labels import build_labels, hide_ground_truth
from flywheel.labeling.labelstudio import human_labels, label_config
from flywheel.labeling.queue import queue_batch, read_exports, read_queue, write_queue
from flywheel.model_input import decode_images
from flywheel.predict import predict
from flywheel.sim.annotator import answer_queue
from flywheel.store import LocalStore
from tests.frames import CLASSES, SIZE, batch_in_store, frames_table, onnx_session, tiny_model

# ---------------------------------------------------------------- queue and annotator


def test_queue_tasks_are_label_studio_imports_with_reachable_images(tmp_path):
    store = LocalStore(tmp_path / "s")
    frames = frames_table(8)
    ids = ["c0/front/1", "c1/front/2"]
    key = write_queue(store, "b1", frames, ids, [("vehicle", 0.4), ("cyclist", 0.3)], model_version="v3")
    assert key == "labeling/queue/b1.json"
    tasks = store.read_json(key)
    assert [t["data"]["frame_id"] for t in tasks] == ids
    for t, (cls, score) in zip(tasks, [("vehicle", 0.4), ("cyclist", 0.3)], strict=True):
        (pred,) = t["predictions"]
        assert pred["model_version"] == "v3" and pred["score"] == pytest.approx(score)
        assert pred["result"] == [{"from_name": "label", "to_name": "image", "type": "choices",
                                   "value": {"choices": [cls]}}]  # fmt: skip
    image_bytes = dict(zip(frames.column("frame_id").to_pylist(), frames.column("image").to_pylist(), strict=True))
    for t in tasks:
        local = tasks and t["data"]["image"]
        assert local == store.uri(f"labeling/images/b1/{t['data']['frame_id']}.jpg")
        assert store.read_bytes(f"labeling/images/b1/{t['data']['frame_id']}.jpg") == image_bytes[t["data"]["frame_id"]]
    # a URL prefix for a web server / Label Studio local-files; or the image inline
    write_queue(store, "b2", frames, ids[:1], image_url_prefix="/data/local-files/?d=fw/")
    assert store.read_json("labeling/queue/b2.json")[0]["data"]["image"] == "/data/local-files/?d=fw/labeling/images/b2/c0/front/1.jpg"
    write_queue(store, "b3", frames, ids[:1], inline_images=True)
    uri = store.read_json("labeling/queue/b3.json")[0]["data"]["image"]
    assert uri.startswith("data:image/jpeg;base64,") and base64.b64decode(uri.split(",", 1)[1]) == image_bytes[ids[0]]
    assert '<Choices name="label" toName="image"' in label_config(CLASSES) and 'value="$image"' in label_config(CLASSES)


def test_queue_rejects_frames_not_in_the_batch(tmp_path):
    with pytest.raises(ValueError, match="not in batch b1"):
        write_queue(LocalStore(tmp_path), "b1", frames_table(4), ["nope/front/0"])


def test_annotator_round_trips_through_label_studio_files(tmp_path):
    store = LocalStore(tmp_path / "s")
    truth = [CLASSES[i % 6] for i in range(8)]
    frames = batch_in_store(store, frames_table(8, truth=truth))
    write_queue(store, "b1", frames, ["c0/front/0", "c0/front/1", "c1/front/3"])
    out = answer_queue(store, classes=CLASSES)
    assert out["answered_batches"] == ["b1"] and out["answered"] == 3  # only what the queue sent
    got = human_labels(read_exports(store), CLASSES)  # the labels stage's own parser
    assert got == {"c0/front/0": 0, "c0/front/1": 1, "c1/front/3": 7 % 6}
    again = answer_queue(store, classes=CLASSES)
    assert again["answered_batches"] == []  # a batch is answered once


def test_annotator_lags_and_errs_as_configured(tmp_path):
    store = LocalStore(tmp_path / "s")
    frames = frames_table(8)
    for batch, ids in (("b1", slice(0, 4)), ("b2", slice(4, 8))):
        batch_in_store(store, frames, batch)
        write_queue(store, batch, frames, frames.column("frame_id").to_pylist()[ids])
    out = answer_queue(store, classes=CLASSES, error_rate=1.0, delay_batches=1)
    assert out["answered_batches"] == ["b1"] and out["waiting"] == ["b2"]
    assert out["flipped"] == 4
    assert all(c != 0 for c in human_labels(read_exports(store), CLASSES).values())  # all wrong
    batch_in_store(store, frames_table(8, truth=[None] * 8), "b2")
    with pytest.raises(ValueError, match="has no ground truth"):
        answer_queue(store, classes=CLASSES)


# ---------------------------------------------------------------- the ground-truth wall


def test_ground_truth_never_reaches_training_labels_when_the_engine_is_on(tmp_path):
    """Every clip says "clear_road"; the champion says "vehicle". Only queued frames may come out
    clear_road (from the annotator); auto-labels are the model's; the rest stays unlabeled."""
    store = LocalStore(tmp_path / "s")
    frames = batch_in_store(store, frames_table(12, truth="clear_road"))
    champion = Champion(onnx_session(tiny_model(bias=[0, 9.0, 0, 0, 0, 0])), {"image_size": SIZE, "version": "v1"})
    queued = ["c0/front/0", "c2/front/3"]
    write_queue(store, "b1", frames, queued)
    answer_queue(store, classes=CLASSES)

    def engine_labels(champ):  # what the labels stage does with the engine on
        return build_labels(hide_ground_truth(frames), classes=CLASSES, human_exports=read_exports(store),
                            auto_probs=champ.score(frames).probs, auto_threshold=0.9)  # fmt: skip

    labels, stats = engine_labels(champion)
    by_frame = {r["frame_id"]: r for r in labels.to_pylist()}
    assert stats["ground_truth"] == 0 and "ground_truth" not in {r["label_source"] for r in by_frame.values()}
    for fid, row in by_frame.items():
        if fid in queued:
            assert (row["label_source"], row["label"]) == ("human", 0)
        else:
            assert (row["label_source"], row["label"]) == ("auto", 1)  # the model's guess, not the truth
    # Unsure champion: no auto-labels, and the unqueued frames stay unlabeled.
    labels, stats = engine_labels(Champion(onnx_session(tiny_model(bias=[0.0] * 6)), {"image_size": SIZE}))
    assert sorted(labels.column("frame_id").to_pylist()) == sorted(queued) and stats["unlabeled"] == 10


def test_hide_ground_truth_nulls_the_column_only():
    frames = frames_table(4)
    hidden = hide_ground_truth(frames)
    assert hidden.column("ground_truth").null_count == 4 and hidden.schema == frames.schema
    assert hidden.drop(["ground_truth"]).equals(frames.drop(["ground_truth"]))


def test_queue_batch_sends_only_unsure_frames_within_budget(tmp_path):
    store = LocalStore(tmp_path / "s")
    frames = frames_table(16)
    scores = predict(tiny_model(head_scale=20.0), decode_images(frames.column("image").to_pylist(), SIZE),
                     embeddings=True)  # fmt: skip
    out = queue_batch(store, "b1", frames, scores, classes=CLASSES,
                      engine=EngineSettings(auto_threshold=1.0, label_budget=5), model_version="v1")  # fmt: skip
    tasks = store.read_json(out["key"])
    assert out["queued"] == len(tasks) == 5 and all(t["predictions"][0]["model_version"] == "v1" for t in tasks)
    again = queue_batch(store, "b1", frames, scores, classes=CLASSES, engine=EngineSettings(label_budget=9))
    assert again["queued"] == 5 and store.read_json(out["key"]) == tasks  # a batch is queued once
    sure = queue_batch(store, "b2", frames, scores, classes=CLASSES,
                       engine=EngineSettings(auto_threshold=0.0, label_budget=5))  # fmt: skip
    assert sure["queued"] == 0 and store.read_json(sure["key"]) == []
    # auto labels off: the champion labels nothing, so every frame is a candidate for people
    manual = queue_batch(store, "b4", frames, scores, classes=CLASSES,
                         engine=EngineSettings(auto_threshold=0.0, auto_labels=False, label_budget=5))  # fmt: skip
    assert manual["queued"] == 5 and manual["candidates"] == 16
    cold = queue_batch(store, "b3", frames, None, classes=CLASSES, engine=EngineSettings(label_budget=7))
    assert cold["queued"] == 7 and [q["batch_id"] for q in read_queue(store)] == ["b1", "b2", "b4", "b3"]


def test_same_uploads_get_the_same_random_picks_and_answers_in_every_run(tmp_path):
    # a batch id carries its upload time, so two runs of one fleet name a batch apart: the cold-start sample
    # and the simulated team's errors must follow the frames, not the name
    frames = frames_table(40)
    picks, answers = [], []
    for run, batch in (("r1", "20260101T000000-aa"), ("r2", "20261231T235959-bb")):
        store = LocalStore(tmp_path / run)
        batch_in_store(store, frames, batch)
        queue_batch(store, batch, frames.take(np.arange(40)[::-1]), None, classes=CLASSES,
                    engine=EngineSettings(label_budget=10))  # fmt: skip
        picks.append(sorted(t["data"]["frame_id"] for t in store.read_json(layout.queue_key(batch))))
        answer_queue(store, classes=CLASSES, error_rate=0.5)
        answers.append(human_labels(read_exports(store), CLASSES))
    assert len(picks[0]) == 10 and picks[0] == picks[1]
    assert answers[0] == answers[1] and 0 < sum(c != 0 for c in answers[0].values()) < 10  # some flipped, alike
    other = queue_batch(LocalStore(tmp_path / "r3"), "b", frames, None, classes=CLASSES,
                        engine=EngineSettings(label_budget=10, seed=1))  # fmt: skip
    assert other["queued"] == 10 and sorted(
        t["data"]["frame_id"] for t in LocalStore(tmp_path / "r3").read_json(other["key"])) != picks[0]


def test_a_batch_export_answers_only_the_frames_its_queue_sent(tmp_path):
    """An export for batch b1 that also labels a frame b1 never queued (another batch's, say) does
    not reach that frame: only the queued frames take its answers, and the rest are named."""
    store = LocalStore(tmp_path / "s")
    frames = batch_in_store(store, frames_table(8, truth=[CLASSES[i % 6] for i in range(8)]))
    write_queue(store, "b1", frames, ["c0/front/0"])
    queued = store.read_json(layout.queue_key("b1"))
    stray = {**queued[0], "data": {**queued[0]["data"], "frame_id": "c1/front/3"}}
    answer = {"id": 1, "result": [{"type": "choices", "value": {"choices": [CLASSES[2]]}, "from_name": "label",
                                   "to_name": "image"}], "created_at": "2026-11-01T10:00:00Z"}  # fmt: skip
    store.write_json(layout.done_key("b1"), [{**t, "annotations": [answer]} for t in (queued[0], stray)])
    exports = read_exports(store)
    assert exports[0]["not_queued"] == ["c1/front/3"]
    assert human_labels(exports, CLASSES) == {"c0/front/0": 2}
