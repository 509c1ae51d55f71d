"""The simulated labeling team: it answers the Label Studio queue from outside, as people would.

It reads `labeling/queue/<batch>.json` and writes Label Studio exports to `labeling/done/`, nothing
else: the production labels stage only ever sees those exports. Its answers are the frames' ground
truth (which the simulated fleet recorded): for classification the class, flipped to another at
`error_rate`; for detection the boxes, each one missed (left out) at `error_rate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flywheel import layout
from flywheel.labeling import labelstudio
from flywheel.labeling.queue import read_queue
from flywheel.store import Store

ANNOTATOR = "simulated-annotator"


def answer_queue(
    store: Store,
    *,
    classes: Sequence[str],
    error_rate: float = 0.0,
    delay_batches: int = 0,
    seed: int = 0,
    task: str = "classification",
) -> dict:
    """Answer every queue file that is due; returns what was written and what still waits.

    A queue file is answered once `delay_batches` newer queue files exist (the team lags that
    many batches). Each answer is the frame's ground truth, flipped to another class with
    probability `error_rate`; a queued frame without ground truth is an error. With `task`
    "detection" the answer is the frame's ground-truth boxes (none where the fleet recorded no box
    message), each one missed with probability `error_rate`.
    """
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
    if delay_batches < 0:
        raise ValueError(f"delay_batches must be >= 0, got {delay_batches}")
    if task not in ("classification", "detection"):
        raise ValueError(f"unknown task {task!r}; known: ['classification', 'detection']")
    queue = read_queue(store)
    ready = queue[: max(len(queue) - delay_batches, 0)]
    written, answered, flipped, dropped = [], 0, 0, 0
    for q in ready:
        if q["done"]:
            continue
        truth = (_ground_truth if task == "classification" else _ground_truth_boxes)(store, q["batch_id"])
        export = []
        for k, t in enumerate(q["tasks"]):
            fid = t["data"]["frame_id"]
            rng = np.random.default_rng([seed, *fid.encode()])  # the frame's own draw: same in every run
            if task == "detection":
                if fid not in truth:
                    raise ValueError(f"{store.uri(q['key'])}: queued frame {fid} is not in batch {q['batch_id']}'s frames")
                boxes = truth[fid]
                if unknown := sorted({b[0] for b in boxes} - set(classes)):
                    raise ValueError(f"ground-truth boxes of {fid} have classes {unknown}, not in {list(classes)}")
                kept = [b for b in boxes if rng.random() >= error_rate]  # a missed object
                dropped += len(boxes) - len(kept)
                export.append(labelstudio.exported_box_task(k + 1, t, kept, annotator=ANNOTATOR))
                continue
            name = truth.get(fid)
            if name is None:
                raise ValueError(f"{store.uri(q['key'])}: queued frame {fid} has no ground truth to answer with")
            if name not in classes:
                raise ValueError(f"ground truth of {fid} is {name!r}, not one of {list(classes)}")
            if rng.random() < error_rate:
                name = [c for c in classes if c != name][rng.integers(len(classes) - 1)]
                flipped += 1
            export.append(labelstudio.exported_task(k + 1, t, name, annotator=ANNOTATOR))
        store.write_json(layout.done_key(q["batch_id"]), export)
        written.append(q["batch_id"])
        answered += len(export)
    waiting = [q["batch_id"] for q in queue[len(ready) :] if not q["done"]]
    return {"answered_batches": written, "answered": answered, "flipped": flipped, "dropped": dropped,
            "waiting": waiting}  # fmt: skip


def _ground_truth(store: Store, batch_id: str) -> dict[str, str]:
    """frame_id -> ground-truth class name of a batch, as the simulated fleet recorded it."""
    t = store.read_parquet(layout.frames_key(batch_id), columns=["frame_id", "ground_truth"])
    return {f: g for f, g in zip(t.column("frame_id").to_pylist(), t.column("ground_truth").to_pylist(), strict=True)
            if g is not None}  # fmt: skip


def _ground_truth_boxes(store: Store, batch_id: str) -> dict[str, list[tuple[str, float, float, float, float]]]:
    """frame_id -> ground-truth boxes (class name, x, y, w, h) in pixels of every frame of a batch; [] where the
    fleet recorded no box message."""
    key = layout.frames_key(batch_id)
    if "boxes" not in store.parquet_file(key).schema_arrow.names:
        raise ValueError(f"{store.uri(key)} has no boxes column: written before frames carried boxes")
    t = store.read_parquet(key, columns=["frame_id", "boxes"])
    return {f: [(b["label"], b["x"], b["y"], b["w"], b["h"]) for b in boxes or []]
            for f, boxes in zip(t.column("frame_id").to_pylist(), t.column("boxes").to_pylist(), strict=True)}  # fmt: skip
