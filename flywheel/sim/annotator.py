"""The simulated labeling team: it answers the Label Studio queue from outside, as people would.

It reads `labeling/queue/<batch>.json` and writes Label Studio exports to `labeling/done/`, nothing
else: the production labels stage only ever sees those exports. Its answers are the frames' ground
truth (which the simulated fleet recorded), flipped to another class at `error_rate`.
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
) -> dict:
    """Answer every queue file that is due; returns what was written and what still waits.

    A queue file is answered once `delay_batches` newer queue files exist (the team lags that
    many batches). Each answer is the frame's ground truth, flipped to another class with
    probability `error_rate`; a queued frame without ground truth is an error.
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
        truth = _ground_truth(store, q["batch_id"])
        export = []
        for k, task in enumerate(q["tasks"]):
            fid = task["data"]["frame_id"]
            name = truth.get(fid)
            if name is None:
                raise ValueError(f"{store.uri(q['key'])}: queued frame {fid} has no ground truth to answer with")
            if name not in classes:
                raise ValueError(f"ground truth of {fid} is {name!r}, not one of {list(classes)}")
            rng = np.random.default_rng([seed, *fid.encode()])  # the frame's own draw: same in every run
            if rng.random() < error_rate:
                name = [c for c in classes if c != name][rng.integers(len(classes) - 1)]
                flipped += 1
            export.append(labelstudio.exported_task(k + 1, task, name, annotator=ANNOTATOR))
        store.write_json(layout.done_key(q["batch_id"]), export)
        written.append(q["batch_id"])
        answered += len(export)
    waiting = [q["batch_id"] for q in queue[len(ready) :] if not q["done"]]
    return {"answered_batches": written, "answered": answered, "flipped": flipped, "waiting": waiting}


def _ground_truth(store: Store, batch_id: str) -> dict[str, str]:
    """frame_id -> ground-truth class name of a batch, as the simulated fleet recorded it."""
    t = store.read_parquet(layout.frames_key(batch_id), columns=["frame_id", "ground_truth"])
    return {f: g for f, g in zip(t.column("frame_id").to_pylist(), t.column("ground_truth").to_pylist(), strict=True)
            if g is not None}  # fmt: skip
