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


def auto_accuracy_vs_truth(labels: pa.Table, frames: pa.Table, classes: Sequence[str]) -> dict:
    """Auto-label accuracy against the clips' ground truth, where the frames carry one (a measurement
    only: with the engine on, ground truth never becomes a training label)."""
    index = {c: i for i, c in enumerate(classes)}
    truth = {f: index[g] for f, g in zip(frames.column("frame_id").to_pylist(),
                                         frames.column("ground_truth").to_pylist(), strict=True)
             if g is not None}  # fmt: skip
    return auto_label_accuracy(labels, truth)


def label_errors(probs: np.ndarray, frame_ids: Sequence[str], labels: pa.Table, classes: Sequence[str], *,
                 min_score: float = 0.0, limit: int = 50) -> dict:  # fmt: skip
    """Likely wrong human and ground-truth labels of a batch, by confident learning.

    `probs` (N, C) are the champion's for `frame_ids`; it never trained on this batch, so they are
    out of sample. Auto labels are left out (they are the champion's own guesses). Only flags whose
    score (p[suggested] - p[given]) reaches `min_score` count: below it, a fair champion's doubts
    outnumber real errors (`flywheel bench label-errors`). Returns
    `{"checked", "flagged", "errors": [{frame_id, given, suggested, score}] (worst `limit`)}`.
    """
    row_of = {f: i for i, f in enumerate(frame_ids)}
    keep = [s != "auto" for s in labels.column("label_source").to_pylist()]
    labels = labels.filter(pa.array(keep, pa.bool_()))
    if labels.num_rows < 2:
        return {"checked": labels.num_rows, "flagged": 0, "errors": [], "note": "too few human/ground-truth labels"}
    fids = labels.column("frame_id").to_pylist()
    given = np.asarray(labels.column("label").to_pylist())
    errors = find_label_errors(np.asarray(probs)[[row_of[f] for f in fids]], given, frame_ids=fids)
    errors = [e for e in errors if e[3] >= min_score]
    named = [{"frame_id": f, "given": classes[g], "suggested": classes[s], "score": round(sc, 3)}
             for f, g, s, sc in errors[:limit]]  # fmt: skip
    return {"checked": len(fids), "flagged": len(errors), "errors": named}


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
