"""The human queue: which frames of a batch go to people, their Label Studio tasks out, the answers back.

    labeling/queue/<batch>.json          Label Studio *import* tasks (one file per fleet batch)
    labeling/images/<batch>/<frame>.jpg  the queued frames, as uploaded (.png/.webp keep their format)
    labeling/done/*.json                 Label Studio JSON *exports* dropped back by annotators

Image references: each task's `data.image` is `image_url_prefix + <key>` when a prefix is given
(e.g. `/data/local-files/?d=flywheel/` for Label Studio's local-files serving with
LOCAL_FILES_DOCUMENT_ROOT at the store's parent, or `https://cdn.example/` in front of the
bucket), else the store URI of the image (`s3://bucket/prefix/labeling/images/...`, which
Label Studio resolves through a connected S3 source storage, or a local path). With
`inline_images=True` the image is a `data:` URI in the task itself: no storage to connect,
bigger task files. The formats themselves are in flywheel/labeling/labelstudio.py.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from collections.abc import Collection, Sequence

import numpy as np
import pyarrow as pa

from flywheel import layout
from flywheel.config import EngineSettings
from flywheel.engine.select import select_for_labeling
from flywheel.labeling import labelstudio
from flywheel.predict import Predictions
from flywheel.store import Store

EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}


def frames_rng(seed: int, frame_ids: Sequence[str]) -> np.random.Generator:
    """A generator drawn from `seed` and the frames themselves, in any order: the same uploads give the same
    draws in every run (a batch id carries the upload time, so two runs of one fleet would pick apart)."""
    digest = hashlib.sha256("\n".join(sorted(frame_ids)).encode()).digest()
    return np.random.default_rng([seed, *digest[:16]])


def image_key(batch_id: str, frame_id: str, fmt: str = "jpeg") -> str:
    if fmt not in EXTENSIONS:
        raise ValueError(f"frame {frame_id}: unknown image format {fmt!r}; known: {sorted(EXTENSIONS)}")
    return layout.labeling_image_key(batch_id, frame_id, EXTENSIONS[fmt])


def queue_batch(
    store: Store,
    batch_id: str,
    frames: pa.Table,
    scores: Predictions | None,
    *,
    classes: list[str],
    engine: EngineSettings,
    model_version: str | None = None,
    auto_classes: Collection[int] | None = None,
) -> dict:
    """Pick at most `engine.label_budget` frames of a batch for humans and write their Label Studio queue.

    `scores` are the champion's predictions (with embeddings) for every row of `frames`. With a
    champion: only frames it is unsure of (< auto_threshold; all, with auto labels off) are candidates, chosen by
    `engine.strategy`, pre-annotated with its guess. Without one: a uniform random sample.
    A batch is queued once: a retried or repeated labels run finds its queue file and keeps it.
    """
    fids = frames.column("frame_id").to_pylist()
    if not fids:
        raise ValueError(f"batch {batch_id} has no frames to queue")
    key = layout.queue_key(batch_id)
    if store.exists(key):
        return {"key": key, "queued": len(store.read_json(key)), "strategy": "queued by an earlier run"}
    if scores is None:
        ranked = sorted(fids)
        chosen = frames_rng(engine.seed, ranked).choice(len(ranked), size=min(engine.label_budget, len(ranked)),
                                                        replace=False)  # fmt: skip
        write_queue(store, batch_id, frames, [ranked[i] for i in chosen], image_url_prefix=engine.image_url_prefix)
        return {"key": key, "queued": len(chosen), "candidates": len(fids), "strategy": "random (no champion)"}
    probs, emb = scores.probs, scores.embeddings
    # what the champion will auto-label needs no person; without auto labels every frame is a candidate, and
    # a confident guess of a class whose auto labels are not trusted (`auto_classes`) is one too
    auto = probs.max(axis=1) >= engine.auto_threshold if engine.auto_labels else np.zeros(len(fids), bool)
    if auto_classes is not None:
        auto &= np.isin(probs.argmax(axis=1), list(auto_classes))
    unsure = np.flatnonzero(~auto)
    meta = {"condition": [frames.column("condition")[int(i)].as_py() for i in unsure]}
    picks = unsure[select_for_labeling(probs[unsure], emb[unsure], meta, budget=engine.label_budget,
                                       strategy=engine.strategy, seed=engine.seed)]  # fmt: skip
    predictions = [(classes[int(probs[i].argmax())], float(probs[i].max())) for i in picks]
    write_queue(store, batch_id, frames, [fids[i] for i in picks], predictions, model_version=model_version,
                image_url_prefix=engine.image_url_prefix)  # fmt: skip
    return {"key": key, "queued": len(picks), "candidates": len(unsure), "strategy": engine.strategy,
            "queued_by_condition": dict(Counter(meta["condition"][j] for j in np.searchsorted(unsure, picks)))}  # fmt: skip


def write_queue(
    store: Store,
    batch_id: str,
    frames: pa.Table,
    frame_ids: Sequence[str],
    predictions: Sequence[tuple[str, float]] | None = None,
    *,
    model_version: str | None = None,
    image_url_prefix: str | None = None,
    inline_images: bool = False,
    box_predictions: Sequence[list[tuple[str, float, float, float, float, float]]] | None = None,
    detection: bool = False,
) -> str:
    """Queue `frame_ids` of a batch for a human: write their images, then the import tasks; returns the key.

    `frames` is the batch's frames table (schema.FRAMES); `predictions` (class name, score)
    per queued frame become Label Studio pre-annotations from `model_version`. With `detection`
    the tasks ask for boxes (`labelstudio.import_box_task`, the frame's width and height in their
    data) and `box_predictions`, per queued frame the champion's boxes (class name, score, x, y, w,
    h) in pixels, pre-fill them.
    """
    if predictions is not None and len(predictions) != len(frame_ids):
        raise ValueError(f"predictions has {len(predictions)} entries for {len(frame_ids)} frame_ids")
    if box_predictions is not None and len(box_predictions) != len(frame_ids):
        raise ValueError(f"box_predictions has {len(box_predictions)} entries for {len(frame_ids)} frame_ids")
    if (predictions if detection else box_predictions) is not None:
        raise ValueError("a detection queue takes box_predictions, a classification queue predictions")
    if len(set(frame_ids)) != len(frame_ids):
        raise ValueError("frame_ids holds duplicates: queue each frame once")
    row_of = {fid: i for i, fid in enumerate(frames.column("frame_id").to_pylist())}
    missing = [f for f in frame_ids if f not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} frame_id(s) to queue are not in batch {batch_id}'s frames: {missing[:5]}")
    rows = pa.array([row_of[f] for f in frame_ids], pa.int64())
    columns = ["frame_id", "clip_id", "camera", "condition", "trigger", "image", "format"]
    picked = frames.select(columns + (["width", "height"] if detection else [])).take(rows)
    tasks = []
    for i, r in enumerate(picked.to_pylist()):
        key = image_key(batch_id, r["frame_id"], r["format"])
        if inline_images:
            ref = f"data:image/{r['format']};base64,{base64.b64encode(r['image']).decode()}"
        else:
            store.write_bytes(key, r["image"])  # before the task that points at it
            ref = f"{image_url_prefix}{key}" if image_url_prefix is not None else store.uri(key)
        data = {"image": ref, "frame_id": r["frame_id"], "batch_id": batch_id, "clip_id": r["clip_id"],
                "camera": r["camera"], "condition": r["condition"], "trigger": r["trigger"]}  # fmt: skip
        if detection:
            boxes = box_predictions[i] if box_predictions is not None else None
            tasks.append(labelstudio.import_box_task(data, boxes, width=r["width"], height=r["height"],
                                                     model_version=model_version))  # fmt: skip
            continue
        prediction = predictions[i] if predictions is not None else None
        tasks.append(labelstudio.import_task(data, prediction, model_version=model_version))
    store.write_json(layout.queue_key(batch_id), tasks)
    return layout.queue_key(batch_id)


def read_queue(store: Store) -> list[dict]:
    """Every queue file, oldest first: `{"batch_id", "key", "tasks", "done"}` (done: an export exists)."""
    out = []
    objs = [o for o in store.list(layout.LABELING_QUEUE) if o.key.endswith(".json")]
    for o in sorted(objs, key=lambda o: (o.mtime, o.key)):
        batch_id = o.key[len(layout.LABELING_QUEUE) : -len(".json")]
        tasks = store.read_json(o.key)
        if not isinstance(tasks, list):
            raise ValueError(f"{store.uri(o.key)}: a queue file is a list of Label Studio tasks")
        out.append({"batch_id": batch_id, "key": o.key, "tasks": tasks,
                    "done": store.exists(layout.done_key(batch_id))})  # fmt: skip
    return out


def read_exports(store: Store) -> list[dict]:
    """Every `*.json` Label Studio export in labeling/done/, by key, as `{"source": key, "tasks": [...], "error"}`.

    A file that is not JSON, or not a list of tasks, comes back with no tasks and `error` naming
    it, so one bad file does not hide the answers in the others: `labelstudio.human_labels` raises
    that error, or reports it when asked to skip bad exports. The export of a batch that has a queue
    (`labeling/done/<batch>.json` beside `labeling/queue/<batch>.json`) answers the frames that queue
    holds only: a task for any other frame is left out and named in `not_queued`.
    """
    exports = []
    for obj in store.list(layout.LABELING_DONE):
        if not obj.key.endswith(".json"):
            continue
        tasks, error, foreign = [], None, []
        try:
            tasks = labelstudio.parse_export(store.read_bytes(obj.key), store.uri(obj.key))
        except ValueError as e:  # the message names the file and what is wrong with it
            error = str(e)
        queue = layout.queue_key(obj.key[len(layout.LABELING_DONE) : -len(".json")])
        if tasks and store.exists(queue):  # a batch's export answers that batch's queue, nothing else
            queued = {_frame_id(t) for t in store.read_json(queue)}
            foreign = [f for t in tasks if (f := _frame_id(t)) is not None and f not in queued]
            tasks = [t for t in tasks if _frame_id(t) is None or _frame_id(t) in queued]
        exports.append({"source": obj.key, "tasks": tasks, "error": error, "not_queued": foreign})
    return exports


def _frame_id(task) -> str | None:
    data = task.get("data") if isinstance(task, dict) else None
    return data.get("frame_id") if isinstance(data, dict) else None


def human_labels_spent(store: Store) -> int:
    """Annotations that came back from humans (Label Studio exports in labeling/done/)."""
    return sum(len(e["tasks"]) for e in read_exports(store))
