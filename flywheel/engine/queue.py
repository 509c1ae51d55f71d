"""The human queue in Label Studio's own formats, and a simulated annotator that works only through it.

    labeling/queue/<batch>.json          Label Studio *import* tasks (one file per fleet batch)
    labeling/images/<batch>/<frame>.jpg  the queued frames, as uploaded (.png/.webp keep their format)
    labeling/done/<batch>.json           Label Studio JSON *export* dropped back by annotators
                                         (what labels.load_label_studio_exports reads)

Image references: each task's `data.image` is `image_url_prefix + <key>` when a prefix is given
(e.g. `/data/local-files/?d=flywheel/` for Label Studio's local-files serving with
LOCAL_FILES_DOCUMENT_ROOT at the store's parent, or `https://cdn.example/` in front of the
bucket), else the store URI of the image (`s3://bucket/prefix/labeling/images/...`, which
Label Studio resolves through a connected S3 source storage, or a local path). With
`inline_images=True` the image is a `data:` URI in the task itself: no storage to connect,
bigger task files.

Label Studio project config for these tasks: `label_config(classes)`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from xml.sax.saxutils import quoteattr

import numpy as np
import pyarrow as pa

from flywheel.store import Store

QUEUE_PREFIX = "labeling/queue/"
DONE_PREFIX = "labeling/done/"
IMAGES_PREFIX = "labeling/images/"
FROM_NAME, TO_NAME = "label", "image"  # the control and object tag names of label_config
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
ANNOTATOR = "simulated-annotator"


def queue_key(batch_id: str) -> str:
    return f"{QUEUE_PREFIX}{batch_id}.json"


def done_key(batch_id: str) -> str:
    return f"{DONE_PREFIX}{batch_id}.json"


def image_key(batch_id: str, frame_id: str, fmt: str = "jpeg") -> str:
    if fmt not in EXTENSIONS:
        raise ValueError(f"frame {frame_id}: unknown image format {fmt!r}; known: {sorted(EXTENSIONS)}")
    return f"{IMAGES_PREFIX}{batch_id}/{frame_id}.{EXTENSIONS[fmt]}"


def label_config(classes: Sequence[str]) -> str:
    """The Label Studio labeling config (XML) whose names match the tasks and exports here."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n'
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInLine="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")  # fmt: skip


def choice_result(class_name: str) -> list[dict]:
    """A Label Studio `result` holding one single-choice classification."""
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [class_name]}}]


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
) -> str:
    """Queue `frame_ids` of a batch for a human: write their images, then the import tasks; returns the key.

    `frames` is the batch's frames table (schema.FRAMES); `predictions` (class name, score)
    per queued frame become Label Studio pre-annotations from `model_version`.
    """
    if predictions is not None and len(predictions) != len(frame_ids):
        raise ValueError(f"predictions has {len(predictions)} entries for {len(frame_ids)} frame_ids")
    if len(set(frame_ids)) != len(frame_ids):
        raise ValueError("frame_ids holds duplicates: queue each frame once")
    row_of = {fid: i for i, fid in enumerate(frames.column("frame_id").to_pylist())}
    missing = [f for f in frame_ids if f not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} frame_id(s) to queue are not in batch {batch_id}'s frames: {missing[:5]}")
    rows = pa.array([row_of[f] for f in frame_ids], pa.int64())
    picked = frames.select(["frame_id", "clip_id", "camera", "condition", "trigger", "image", "format"]).take(rows)
    tasks = []
    for i, r in enumerate(picked.to_pylist()):
        key = image_key(batch_id, r["frame_id"], r["format"])
        if inline_images:
            ref = f"data:image/{r['format']};base64,{base64.b64encode(r['image']).decode()}"
        else:
            store.write_bytes(key, r["image"])  # before the task that points at it
            ref = f"{image_url_prefix}{key}" if image_url_prefix is not None else store.uri(key)
        task = {"data": {"image": ref, "frame_id": r["frame_id"], "batch_id": batch_id, "clip_id": r["clip_id"],
                         "camera": r["camera"], "condition": r["condition"], "trigger": r["trigger"]}}  # fmt: skip
        if predictions is not None:
            name, score = predictions[i]
            task["predictions"] = [{"model_version": str(model_version), "score": float(score),
                                    "result": choice_result(str(name))}]  # fmt: skip
        tasks.append(task)
    store.write_json(queue_key(batch_id), tasks)
    return queue_key(batch_id)


def read_queue(store: Store) -> list[dict]:
    """Every queue file, oldest first: `{"batch_id", "key", "tasks", "done"}` (done: an export exists)."""
    out = []
    objs = [o for o in store.list(QUEUE_PREFIX) if o.key.endswith(".json")]
    for o in sorted(objs, key=lambda o: (o.mtime, o.key)):
        batch_id = o.key[len(QUEUE_PREFIX) : -len(".json")]
        tasks = store.read_json(o.key)
        if not isinstance(tasks, list):
            raise ValueError(f"{store.uri(o.key)}: a queue file is a list of Label Studio tasks")
        out.append({"batch_id": batch_id, "key": o.key, "tasks": tasks, "done": store.exists(done_key(batch_id))})
    return out


def queued_frame_ids(store: Store) -> set[str]:
    """Every frame_id any queue file sent to a human."""
    return {t["data"]["frame_id"] for q in read_queue(store) for t in q["tasks"]}


def queued_ground_truth(store: Store, frames: pa.Table) -> dict[str, str]:
    """frame_id -> ground-truth class name for the queued frames of `frames` only: the annotator's lookup."""
    queued = queued_frame_ids(store)
    out = {}
    for fid, truth in zip(frames.column("frame_id").to_pylist(), frames.column("ground_truth").to_pylist(), strict=True):
        if fid in queued and truth is not None:
            out[fid] = truth
    return out


def simulate_annotator(
    store: Store,
    *,
    ground_truth: Mapping[str, str],
    classes: Sequence[str],
    error_rate: float = 0.0,
    delay_batches: int = 0,
    seed: int = 0,
) -> dict:
    """Answer the queue like a labeling team: read labeling/queue/, write Label Studio exports to labeling/done/.

    A queue file is answered once `delay_batches` newer queue files exist (the team lags that
    many batches). Each answer is the frame's `ground_truth` class, flipped to another class
    with probability `error_rate`. Only queued frames are ever answered; a queued frame
    missing from `ground_truth` is an error (the caller's lookup is incomplete).
    """
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
    if delay_batches < 0:
        raise ValueError(f"delay_batches must be >= 0, got {delay_batches}")
    queue = read_queue(store)
    ready = queue[: max(len(queue) - delay_batches, 0)]
    written, answered, flipped = [], 0, 0
    for q in ready:
        if q["done"]:
            continue
        rng = np.random.default_rng([seed, *q["batch_id"].encode()])
        export = []
        for k, task in enumerate(q["tasks"]):
            fid = task["data"]["frame_id"]
            if fid not in ground_truth:
                raise ValueError(f"{store.uri(q['key'])}: queued frame {fid} has no entry in ground_truth")
            name = ground_truth[fid]
            if name not in classes:
                raise ValueError(f"ground truth of {fid} is {name!r}, not one of {list(classes)}")
            if rng.random() < error_rate:
                name = [c for c in classes if c != name][rng.integers(len(classes) - 1)]
                flipped += 1
            export.append(_exported_task(k + 1, task, name))
        store.write_json(done_key(q["batch_id"]), export)
        written.append(done_key(q["batch_id"]))
        answered += len(export)
    waiting = [q["key"] for q in queue[len(ready) :] if not q["done"]]
    return {"written": written, "answered": answered, "flipped": flipped, "waiting": waiting}


def _exported_task(task_id: int, task: dict, class_name: str) -> dict:
    """One task as Label Studio's JSON export writes it: data, predictions, and the annotation."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "id": task_id,
        "data": task["data"],
        "predictions": task.get("predictions", []),
        "annotations": [{
            "id": task_id, "completed_by": ANNOTATOR, "was_cancelled": False, "ground_truth": False,
            "created_at": now, "updated_at": now,
            "result": [{"id": f"r{task_id}", "origin": "manual", **r} for r in choice_result(class_name)],
        }],
    }  # fmt: skip
