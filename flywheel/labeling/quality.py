"""Label quality: how good the auto-labels are, and which given labels look wrong (confident learning)."""

from __future__ import annotations

import warnings
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
                 embeddings: np.ndarray | None = None, min_score: float = 0.0, limit: int = 50,
                 seed: int = 0) -> dict:  # fmt: skip
    """Likely wrong human and ground-truth labels of a batch, by confident learning.

    `probs` (N, C) are the champion's for `frame_ids`; it never trained on this batch, so they are
    out of sample. With its `embeddings` (N, D), they are averaged with `cross_validated_probs` (a
    model of the batch's own labels on those embeddings), which corrects the champion's own
    systematic mistakes. Auto labels are left out (they are the champion's own guesses). Only flags
    whose score (p[suggested] - p[given]) reaches `min_score` count (`flywheel bench label-errors`).
    Returns `{"checked", "flagged", "errors": [{frame_id, given, suggested, score}] (worst `limit`)}`.
    """
    row_of = {f: i for i, f in enumerate(frame_ids)}
    keep = [s != "auto" for s in labels.column("label_source").to_pylist()]
    labels = labels.filter(pa.array(keep, pa.bool_()))
    if labels.num_rows < 2:
        return {"checked": labels.num_rows, "flagged": 0, "errors": [], "note": "too few human/ground-truth labels"}
    fids = labels.column("frame_id").to_pylist()
    given = np.asarray(labels.column("label").to_pylist())
    rows = [row_of[f] for f in fids]
    p = np.asarray(probs, np.float64)[rows]
    if embeddings is not None:
        p = blended_probs(p, np.asarray(embeddings)[rows], given, seed=seed)
    errors = find_label_errors(p, given, frame_ids=fids)
    errors = [e for e in errors if e[3] >= min_score]
    named = [{"frame_id": f, "given": classes[g], "suggested": classes[s], "score": round(sc, 3)}
             for f, g, s, sc in errors[:limit]]  # fmt: skip
    return {"checked": len(fids), "flagged": len(errors), "errors": named}


CV_FOLDS = 5


def cross_validated_probs(embeddings: np.ndarray, given: np.ndarray, num_classes: int, *, folds: int = CV_FOLDS,
                          seed: int = 0) -> np.ndarray:  # fmt: skip
    """(N, C) out-of-sample probabilities from the batch's own labels: a logistic regression on the
    champion's L2-normalized embeddings, K-fold, so each frame is scored by a model that never saw its
    label. A class with fewer labels than folds keeps its frames in every training fold it can."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    z = np.asarray(embeddings, np.float64)
    z = z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)
    given = np.asarray(given)
    out = np.zeros((len(z), num_classes))
    counts = np.bincount(given, minlength=num_classes)
    folds = int(min(folds, max(2, counts[counts > 0].max(initial=0))))
    if len(z) < 2 * folds or (counts > 0).sum() < 2:
        out[np.arange(len(z)), given] = 1.0  # nothing to learn from: no evidence against any label
        return out
    # a class too small to stratify: its frames go round the folds by themselves (no warnings, no empty class)
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    strata = np.where(counts[given] >= folds, given, -1)
    with warnings.catch_warnings():  # a stratum of the small classes below `folds` is expected, not news
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        parts = list(split.split(z, strata))
    for train, test in parts:
        seen = np.unique(given[train])
        if len(seen) < 2:
            out[test, given[test]] = 1.0
            continue
        model = LogisticRegression(C=1.0, max_iter=500).fit(z[train], given[train])
        out[np.ix_(test, seen)] = model.predict_proba(z[test])
    return out


def blended_probs(probs: np.ndarray, embeddings: np.ndarray, given: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """The mean of the champion's probabilities and `cross_validated_probs` of the same frames."""
    probs = np.asarray(probs, np.float64)
    return 0.5 * (probs + cross_validated_probs(embeddings, given, probs.shape[1], seed=seed))


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
