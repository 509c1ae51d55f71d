"""Shadow mode: the deployed model runs on every recorded clip in the car and flags the ones worth uploading.

The simulator (`sim.simulate(..., upload_filter=...)`) uploads a flagged clip with its trigger
(`campaign:<name>` for a clip like a mining campaign's frames, else `low_confidence` or `novel`),
and a random share of the others as `random`. `engine.shadow_trigger` picks what flags a clip:
`confidence`, when any of its frames scores below `threshold` on the chosen confidence measure (all
measures are in [0, 1], higher meaning surer, so one threshold semantics fits all three), or
`novelty`, when it looks unlike the champion's training data (flywheel/engine/novelty.py). A deployed
detector (`task: detection`) flags a clip `low_confidence` when a frame holds a detection it is unsure of
(`box_shadow_filter`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from flywheel.config import Settings
from flywheel.deployment import deploy
from flywheel.engine.campaigns import match as campaign_match
from flywheel.engine.campaigns import queries as campaign_queries
from flywheel.engine.novelty import NOVEL, NoveltyReference
from flywheel.engine.novelty import reference as novelty_reference
from flywheel.engine.select import MEASURES, confidence
from flywheel.model_input import frames_to_input
from flywheel.predict import predict
from flywheel.store import Store

LOW_CONFIDENCE = "low_confidence"

# The fleet's upload hook: frames (N, H, W, 3) uint8 RGB and the clip metadata -> trigger or None.
UploadFilter = Callable[[np.ndarray, dict], "str | None"]


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
    threshold: float | None,
    measure: str = "max_softmax",
    budget: DailyUploadBudget | None = None,
    campaigns: list[tuple[str, np.ndarray, float]] | None = None,
    novelty: NoveltyReference | None = None,
) -> UploadFilter:
    """An upload filter that flags a clip `campaign:<name>` when a frame looks like an active mining
    campaign's query (`campaigns.queries`), else `low_confidence` when any frame's confidence <
    `threshold` (None: never), else `novel` when its novelty reaches `novelty`'s threshold.

    `manifest` is the deployed model's (deploy.load_deployed): its `image_size` sets the
    resize. With a `budget`, flagged clips beyond the day's budget are not flagged (the
    simulator may still upload them as `random`).
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown confidence measure {measure!r}; known: {MEASURES}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    size = int(manifest["image_size"])

    def upload_filter(frames: np.ndarray, meta: dict) -> str | None:
        out = predict(session, frames_to_input(frames, size), embeddings=bool(campaigns) or novelty is not None)
        trigger = campaign_match(out.embeddings, campaigns) if campaigns else None
        if trigger is None and threshold is not None and confidence(out.probs, measure).min() < threshold:
            trigger = LOW_CONFIDENCE
        if trigger is None and novelty is not None and novelty.clip_novelty(out.embeddings) >= novelty.threshold:
            trigger = NOVEL
        if trigger is None or (budget is not None and not budget.take(meta)):
            return None
        return trigger

    return upload_filter


def fleet_filter(store: Store, settings: Settings) -> UploadFilter | None:
    """The shadow filter of the deployed champion, with the active mining campaigns; None (random
    uploads only) when nothing is deployed yet, or the engine is off and no campaign runs. The champion scores on the compute device (`train.device`) where
    onnxruntime can (`deploy.providers`)."""
    e = settings.engine
    if deploy.current(store, settings.mlflow.model_name) is None:
        return None
    session, manifest = deploy.load_deployed(store, settings.mlflow.model_name, settings.train.device)
    if settings.task == "detection":  # box scores; no campaigns (they query the classifier's embeddings)
        if not e.enabled:
            return None
        budget = DailyUploadBudget(e.uploads_per_day) if e.uploads_per_day is not None else None
        return box_shadow_filter(session, manifest, band=settings.detection.unsure_band, budget=budget)
    mining = campaign_queries(store, session, manifest)
    if not e.enabled and not mining:
        return None
    budget = DailyUploadBudget(e.uploads_per_day) if e.uploads_per_day is not None else None
    by_confidence = e.enabled and e.shadow_trigger == "confidence"
    novelty = (novelty_reference(store, session, manifest, dataset_name=settings.dataset.name,
                                 share=e.novelty_share, seed=e.seed)
               if e.enabled and e.shadow_trigger == "novelty" else None)  # fmt: skip
    return shadow_filter(session, manifest, threshold=e.shadow_threshold if by_confidence else None,
                         measure=e.shadow_measure, budget=budget, campaigns=mining, novelty=novelty)  # fmt: skip


def box_shadow_filter(session: ort.InferenceSession, manifest: dict, *, band: tuple[float, float],
                      budget: DailyUploadBudget | None = None) -> UploadFilter:  # fmt: skip
    """The detector's shadow filter (`task: detection`): a clip is `low_confidence` when any frame holds a
    detection whose score lies in `band` (detection.unsure_band: an object the model half sees)."""
    from flywheel.detection.export import session_detect

    lo, hi = band
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"the unsure band must be 0 <= low < high <= 1, got {band}")
    size = int(manifest["image_size"])

    def upload_filter(frames: np.ndarray, meta: dict) -> str | None:
        found = session_detect(session, frames_to_input(frames, size))
        if not any(lo <= d[1] < hi for dets in found for d in dets):
            return None
        return None if budget is not None and not budget.take(meta) else LOW_CONFIDENCE

    return upload_filter
