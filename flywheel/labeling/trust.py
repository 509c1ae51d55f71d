"""Which classes' auto labels to take: those the champion is shown to get right where it is sure.

A young champion can be confidently wrong about a class (BENCHMARKS.md: 0-57 % of the auto labels of
an early turn were right). So with `engine.auto_min_precision` set, a class's auto labels are taken
only while the champion's precision on the golden frames it is sure of (top probability at or above
`engine.auto_threshold`, predicted as that class) clears it, over at least `engine.auto_min_support`
such frames. The golden frames are labeled by people or ground truth and never trained on, so the
precision is held out. Frames of an untrusted class go to the human queue like unsure ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from flywheel.config import Settings
from flywheel.data import dataset
from flywheel.evaluation import evalset
from flywheel.predict import predict
from flywheel.store import Store

if TYPE_CHECKING:
    from flywheel.deployment.champion import Champion


def auto_label_trust(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], *, auto_threshold: float,
                     min_precision: float, min_support: int) -> dict:  # fmt: skip
    """Per class, the champion's precision among the frames it would auto-label as that class.

    `probs` (N, C) are its probabilities on the golden frames, `labels` (N,) their labels. Returns
    `{"trusted": [class index, ...], "per_class": {name: {"confident", "correct", "precision", "trusted"}},
    "frames": N}`; precision is None for a class it is sure of on no golden frame."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if probs.ndim != 2 or probs.shape != (len(labels), len(classes)):
        raise ValueError(f"probs must be (N, {len(classes)}) for {len(labels)} labels, got {probs.shape}")
    sure = probs.max(axis=1) >= auto_threshold
    predicted = probs.argmax(axis=1)
    per_class, trusted = {}, []
    for k, name in enumerate(classes):
        mine = sure & (predicted == k)
        n, correct = int(mine.sum()), int((labels[mine] == k).sum())
        precision = correct / n if n else None
        ok = n >= min_support and precision is not None and precision >= min_precision
        per_class[name] = {"confident": n, "correct": correct, "precision": precision, "trusted": ok}
        if ok:
            trusted.append(k)
    return {"trusted": trusted, "per_class": per_class, "frames": int(len(labels))}


def champion_trust(store: Store, settings: Settings, champ: Champion) -> dict | None:
    """Which classes' auto labels to take (labeling/trust.py), from the champion's guesses on the golden
    set of the latest dataset version; None with `engine.auto_min_precision` unset. Before a golden set
    exists no class is trusted: nothing has shown the champion right yet."""
    e, name = settings.engine, settings.dataset.name
    if e.auto_min_precision is None:
        return None
    golden = np.zeros(0, bool)
    if dataset.latest_version(store, name):
        images, labels, _, golden = evalset.evaluation_frames(store, name, dataset.load_manifest(store, name),
                                                              image_size=settings.image_size)  # fmt: skip
    if not golden.any():
        return {"trusted": [], "per_class": {}, "frames": 0, "note": "no golden frames yet: no auto labels"}
    probs = predict(champ.session, images[golden]).probs
    return auto_label_trust(probs, labels[golden], settings.classes, auto_threshold=e.auto_threshold,
                            min_precision=e.auto_min_precision, min_support=e.auto_min_support)  # fmt: skip
