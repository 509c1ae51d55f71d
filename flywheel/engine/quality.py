"""Label quality: how good the auto-labels are, and which given labels look wrong (confident learning)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa


def auto_label_accuracy(labels: pa.Table, reference: Mapping[str, int], *, source: str = "auto",
                        num_classes: int | None = None) -> dict:  # fmt: skip
    """Accuracy of the `source` labels of `labels` (schema.LABELS) on frames where `reference` (frame_id ->
    class index, from a human or the ground truth) also has a label.

    Returns {"compared", "correct", "accuracy" (None when nothing compares), "per_class": {class index: ...}}.
    """
    fids = labels.column("frame_id").to_pylist()
    given = labels.column("label").to_pylist()
    sources = labels.column("label_source").to_pylist()
    pairs = [(g, reference[f]) for f, g, s in zip(fids, given, sources, strict=True) if s == source and f in reference]
    per_class: dict[int, dict] = {}
    for g, r in pairs:
        c = per_class.setdefault(int(g), {"compared": 0, "correct": 0})
        c["compared"] += 1
        c["correct"] += int(g == r)
    if num_classes is not None:
        for k in range(num_classes):
            per_class.setdefault(k, {"compared": 0, "correct": 0})
    for c in per_class.values():
        c["precision"] = c["correct"] / c["compared"] if c["compared"] else None
    correct = sum(int(g == r) for g, r in pairs)
    return {"compared": len(pairs), "correct": correct, "accuracy": correct / len(pairs) if pairs else None,
            "per_class": dict(sorted(per_class.items()))}  # fmt: skip


def class_thresholds(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """(C,) per-class threshold: the mean self-confidence p[i, given[i]] over frames labeled with that class.

    A class nobody labeled gets threshold 1 + eps (it can never be suggested).
    """
    c = probs.shape[1]
    t = np.full(c, 1.0 + 1e-6)
    for k in range(c):
        rows = given == k
        if rows.any():
            t[k] = probs[rows, k].mean()
    return t


def find_label_errors(probs: np.ndarray, given: np.ndarray, *, frame_ids: Sequence[str]
                      ) -> list[tuple[str, int, int, float]]:  # fmt: skip
    """Likely wrong labels by confident learning: [(frame_id, given, suggested, score)], worst first.

    `probs` (N, C) must be out-of-sample (cross-validated or from a model that did not train on
    these frames). A frame is flagged when its given class is below that class's threshold and
    another class reaches its own; the suggestion is that class with the highest probability,
    and score = p[suggested] - p[given] (in (0, 1], larger is surer).
    """
    probs = np.asarray(probs, np.float64)
    given = np.asarray(given)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (N, C) with C >= 2, got shape {probs.shape}")
    if given.shape != (len(probs),):
        raise ValueError(f"given must be ({len(probs)},) class indices, got shape {given.shape}")
    if len(frame_ids) != len(probs):
        raise ValueError(f"frame_ids has {len(frame_ids)} entries for {len(probs)} frames")
    if len(given) and (given.min() < 0 or given.max() >= probs.shape[1]):
        raise ValueError(f"given holds class indices outside [0, {probs.shape[1]})")
    t = class_thresholds(probs, given)  # (C,)
    n = np.arange(len(probs))
    above = probs >= t[None, :]  # (N, C): the classes each frame confidently belongs to
    above[n, given] = False
    flagged = np.flatnonzero(above.any(axis=1) & (probs[n, given] < t[given]))
    out = []
    for i in flagged:
        cands = np.flatnonzero(above[i])
        s = int(cands[np.argmax(probs[i, cands])])
        out.append((frame_ids[i], int(given[i]), s, float(probs[i, s] - probs[i, given[i]])))
    return sorted(out, key=lambda e: -e[3])
