"""Labels: pick one label per frame from human answers, the clip's ground truth and the champion's guesses.

Precedence is human > ground_truth > auto: a person who looked at the frame in Label Studio
overrides the annotation that came with the clip, and both override the model. Frames that no
source labels are left out (and counted), so they can be queued for a human. Human answers come
in Label Studio's export format (flywheel/labeling/labelstudio.py); an export file or task that cannot be
read is skipped and listed in the stats (`skipped_exports`: file, task, why), so one bad export
never fails a batch and the good answers still count.

The ground-truth wall: when the data engine is on, the only labels that train a model are
auto-labels (champion confidence >= threshold) and human answers; the labels stage calls
`hide_ground_truth(frames)` first, so a clip's own `/ground_truth` channel cannot leak in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from flywheel.data.schema import LABELS
from flywheel.labeling.labelstudio import human_labels


def build_labels(
    frames: pa.Table,
    *,
    classes: Sequence[str],
    human_exports: Sequence[dict | list] = (),
    auto_probs: np.ndarray | None = None,
    auto_threshold: float = 0.9,
    auto_classes: Collection[int] | None = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """One label per frame (schema LABELS) and stats: counts per source, unlabeled frames, skipped exports.

    `auto_probs` (N, C), one row per frame of `frames`: the champion's probabilities; a frame no
    other source labels takes its top class when that probability reaches `auto_threshold` and the
    class is one of `auto_classes` (None: any class; labeling/trust.py).
    """
    if not 0.0 <= auto_threshold <= 1.0:
        raise ValueError(f"auto_threshold must be in [0, 1], got {auto_threshold}")
    frame_ids = frames.column("frame_id").to_pylist()
    n = len(frame_ids)
    label = np.full(n, -1, dtype=np.int32)
    source = np.full(n, "", dtype=object)
    confidence = np.zeros(n, dtype=np.float32)

    truth = _ground_truth(frames, classes)
    has = truth >= 0
    label[has], source[has], confidence[has] = truth[has], "ground_truth", 1.0

    skipped: list[dict] = []
    humans = human_labels(human_exports, classes, skipped=skipped)
    row_of = {fid: i for i, fid in enumerate(frame_ids)}
    for fid, c in humans.items():
        if fid in row_of:
            i = row_of[fid]
            label[i], source[i], confidence[i] = c, "human", 1.0

    auto_rejected = 0
    if auto_probs is not None:
        auto_probs = _check_probs(auto_probs, n, len(classes))
        todo = np.flatnonzero(label < 0)
        conf = auto_probs[todo].max(axis=1)
        top = auto_probs[todo].argmax(axis=1)
        keep = todo[(conf >= auto_threshold) & (np.isin(top, list(auto_classes)) if auto_classes is not None else True)]
        auto_rejected = len(todo) - len(keep)
        label[keep], source[keep] = auto_probs[keep].argmax(axis=1), "auto"
        confidence[keep] = auto_probs[keep].max(axis=1)

    kept = np.flatnonzero(label >= 0)
    table = pa.table(
        {
            "frame_id": pa.array([frame_ids[i] for i in kept], pa.string()),
            "label": pa.array(label[kept], pa.int32()),
            "label_source": pa.array(source[kept].tolist(), pa.string()),
            "label_confidence": pa.array(confidence[kept], pa.float32()),
        },
        schema=LABELS,
    )
    sources = source[kept].tolist()
    stats = {
        "frames": n,
        "labeled": len(kept),
        "unlabeled": n - len(kept),
        "human": sources.count("human"),
        "ground_truth": sources.count("ground_truth"),
        "auto": sources.count("auto"),
        "auto_below_threshold": auto_rejected,
        "human_labels_for_other_frames": sum(fid not in row_of for fid in humans),
        "per_class": {c: int((label[kept] == i).sum()) for i, c in enumerate(classes)},
        "skipped_exports": skipped,
    }
    return table, stats


def unlabeled_frame_ids(frames: pa.Table, labels: pa.Table) -> list[str]:
    """Frames of `frames` that have no row in `labels` (candidates for the labeling queue)."""
    done = set(labels.column("frame_id").to_pylist())
    return [f for f in frames.column("frame_id").to_pylist() if f not in done]


def _ground_truth(frames: pa.Table, classes: Sequence[str]) -> np.ndarray:
    """Class index per frame from the `ground_truth` column, -1 where null."""
    index = {name: i for i, name in enumerate(classes)}
    out = np.full(frames.num_rows, -1, dtype=np.int32)
    if "ground_truth" not in frames.column_names:
        return out
    for i, (fid, name) in enumerate(
        zip(
            frames.column("frame_id").to_pylist(),
            frames.column("ground_truth").to_pylist(),
            strict=True,
        )
    ):
        if name is None:
            continue
        if name not in index:
            raise ValueError(
                f"frame {fid}: unknown ground_truth class {name!r}; known: {list(classes)}"
            )
        out[i] = index[name]
    return out


def _check_probs(probs: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape != (n, n_classes):
        raise ValueError(f"auto_probs must have shape ({n}, {n_classes}) (frames, classes), got {probs.shape}")
    return probs


def hide_ground_truth(frames: pa.Table) -> pa.Table:
    """The frames table with every `ground_truth` set to null: what the labels stage sees when the engine is on."""
    if "ground_truth" not in frames.column_names:
        return frames
    i = frames.column_names.index("ground_truth")
    return frames.set_column(i, frames.field(i), pa.nulls(frames.num_rows, frames.field(i).type))


def fingerprint(labels: pa.Table) -> str:
    """The sha256 of a batch's labels (frame, label or box set, source), whatever order or encoding they were
    written in."""
    t = labels.select(["frame_id", "boxes" if "boxes" in labels.column_names else "label", "label_source"]).sort_by("frame_id")
    rows = list(zip(*(t.column(c).to_pylist() for c in t.column_names), strict=True))
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
