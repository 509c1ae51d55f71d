"""Shadow mode: the deployed model runs on every recorded clip in the car and flags the ones it is unsure of.

The simulator (`sim.simulate(..., upload_filter=...)`) uploads a flagged clip with trigger
`low_confidence`, and a random share of the others as `random`. A clip is flagged when any of
its frames scores below `threshold` on the chosen confidence measure; all measures are in
[0, 1], higher meaning surer, so one threshold semantics fits all three.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from flywheel import deploy
from flywheel.augment import resize_square
from flywheel.store import Store

MEASURES = ("max_softmax", "margin", "entropy")
LOW_CONFIDENCE = "low_confidence"

# The simulator's hook: frames (N, H, W, 3) uint8 RGB and the clip metadata -> trigger or None.
UploadFilter = Callable[[np.ndarray, dict], "str | None"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """(N, C) logits -> (N, C) float32 probabilities, numerically stable."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def confidence(probs: np.ndarray, measure: str = "max_softmax") -> np.ndarray:
    """(N,) confidence in [0, 1] per row of probabilities (N, C).

    max_softmax: the top probability; margin: top minus runner-up; entropy: 1 - H(p) / log(C).
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown confidence measure {measure!r}; known: {MEASURES}")
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (N, C) with C >= 2, got shape {probs.shape}")
    p = probs.astype(np.float64)
    if measure == "max_softmax":
        return p.max(axis=1)
    if measure == "margin":
        top2 = np.sort(p, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]
    entropy = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1)
    return 1.0 - entropy / np.log(p.shape[1])


def to_model_input(frames: np.ndarray, size: int) -> np.ndarray:
    """RGB frames (N, H, W, 3) uint8 -> model input (N, 3, size, size) uint8, resized as the reader does."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be uint8 (N, H, W, 3) RGB, got {getattr(frames, 'dtype', type(frames))} "
                         f"{getattr(frames, 'shape', '')}")  # fmt: skip
    out = np.empty((len(frames), 3, size, size), np.uint8)
    for i, f in enumerate(frames):
        out[i] = resize_square(f, size).transpose(2, 0, 1)
    return out


def onnx_probs(session: ort.InferenceSession, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (N, C) from the deployed graph for model inputs (N, 3, S, S) uint8."""
    out = []
    for i in range(0, len(images), batch_size):
        logits = session.run([deploy.OUTPUT_NAME], {deploy.INPUT_NAME: images[i : i + batch_size]})[0]
        out.append(softmax(logits))
    if not out:
        raise ValueError("images is empty: nothing to predict")
    return np.concatenate(out)


class DailyUploadBudget:
    """At most `per_day` shadow-mode uploads per simulated day (the day of the clip's `recorded_at`).

    Counts live in this object: one budget per simulate run (the simulated clock moves
    forward within a run). It caps the filter's own triggers; `hard_brake` and the random
    share are decided by the simulator (see the engine report for the full cap).
    """

    def __init__(self, per_day: int):
        if per_day < 0:
            raise ValueError(f"per_day must be >= 0, got {per_day}")
        self.per_day = per_day
        self.used: Counter[str] = Counter()

    def take(self, meta: dict) -> bool:
        """Spend one upload of the clip's day; False when that day's budget is gone."""
        day = str(meta.get("recorded_at", ""))[:10]
        if not day:
            raise ValueError(f"clip metadata has no 'recorded_at' to charge an upload to: {meta!r}")
        if self.used[day] >= self.per_day:
            return False
        self.used[day] += 1
        return True


def shadow_filter(
    session: ort.InferenceSession,
    manifest: dict,
    *,
    threshold: float,
    measure: str = "max_softmax",
    budget: DailyUploadBudget | None = None,
) -> UploadFilter:
    """An upload filter that flags a clip `low_confidence` when any frame's confidence < `threshold`.

    `manifest` is the deployed model's (deploy.load_deployed): its `image_size` sets the
    resize. With a `budget`, flagged clips beyond the day's budget are not flagged (the
    simulator may still upload them as `random`).
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown confidence measure {measure!r}; known: {MEASURES}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    size = int(manifest["image_size"])

    def upload_filter(frames: np.ndarray, meta: dict) -> str | None:
        probs = onnx_probs(session, to_model_input(frames, size))  # (N, C)
        if confidence(probs, measure).min() >= threshold:
            return None
        if budget is not None and not budget.take(meta):
            return None
        return LOW_CONFIDENCE

    return upload_filter


def fleet_filter(
    store: Store, model_name: str, *, threshold: float, measure: str = "max_softmax",
    uploads_per_day: int | None = None,
) -> UploadFilter | None:  # fmt: skip
    """The shadow filter of the deployed champion, or None (random uploads only) when none is deployed."""
    if deploy.current(store, model_name) is None:
        return None
    session, manifest = deploy.load_deployed(store, model_name)
    budget = DailyUploadBudget(uploads_per_day) if uploads_per_day is not None else None
    return shadow_filter(session, manifest, threshold=threshold, measure=measure, budget=budget)
