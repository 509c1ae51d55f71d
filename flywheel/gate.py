"""The promotion gate (DESIGN.md §4): does the challenger replace the champion?

- With a champion: the challenger's primary metric must beat the champion's by more than
  `margin`, and no slice may regress. Both models are scored on the same frames, so each slice's
  difference is judged with a paired bootstrap interval (`confidence`, `resamples`): a slice
  regresses when its whole interval lies below -`slice_tolerance`. Slices with fewer than
  `min_slice_frames` frames are reported, not gated, except `critical_slices`: a critical slice
  with too few frames fails the gate ("not enough fog frames to judge (31 < 100)") — it fails
  closed rather than pass a model nobody could judge there.
- First model (no champion): the primary metric must reach the absolute `floor`, and every
  critical slice needs its frames too.
- A challenger whose class list differs from the champion's is not comparable: it fails unless
  `allow_new_classes` is set, and then it is judged like a first model (the floor).
- Forced (`force` with `force_reason`): passes, and the decision records it was forced, why,
  and what the gate would have said.

A failed gate is a normal outcome: `decide` returns `passed=False` with the reason. It raises
only for input it cannot read (a report without the metric, predictions of different lengths).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from flywheel.config import GateSettings

EPS = 1e-9  # metrics closer than this are equal: a float tie is not a win


class PrimaryScore(NamedTuple):
    name: str
    challenger: float
    champion: float | None
    margin: float


class SliceDelta(NamedTuple):
    """One slice, challenger vs champion on the same frames: scores, difference and its interval."""

    slice: str
    n: int
    challenger: float
    champion: float
    delta: float  # challenger - champion
    low: float  # paired bootstrap interval of delta
    high: float
    gated: bool
    regressed: bool


@dataclass(frozen=True)
class PairedPredictions:
    """Both models' predicted classes on the same evaluation frames: the evidence for slice intervals."""

    labels: np.ndarray  # (N,) true class index
    challenger: np.ndarray  # (N,) predicted class index
    champion: np.ndarray  # (N,)
    slices: dict[str, list[str]]  # metadata column -> N values; each value is a slice "<column>=<value>"
    num_classes: int

    def __post_init__(self):
        n = len(self.labels)
        for name, arr in (("challenger", self.challenger), ("champion", self.champion)):
            if len(arr) != n:
                raise ValueError(f"{name} predictions have {len(arr)} entries for {n} labels")
        for column, values in self.slices.items():
            if len(values) != n:
                raise ValueError(f"slice column {column!r} has {len(values)} values for {n} frames")


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    forced: bool
    reason: str
    primary: PrimaryScore
    slices: tuple[SliceDelta, ...] = ()
    details: dict = field(default_factory=dict)

    @property
    def slice_regressions(self) -> tuple[SliceDelta, ...]:
        return tuple(s for s in self.slices if s.regressed)

    def to_dict(self) -> dict:
        """JSON-able form, for the deploy manifest, MLflow tags and asset check metadata."""
        return {
            "passed": self.passed,
            "forced": self.forced,
            "reason": self.reason,
            "primary": self.primary._asdict(),
            "slices": [s._asdict() for s in self.slices],
            "slice_regressions": [s._asdict() for s in self.slice_regressions],
            "details": self.details,
        }


def decide(challenger: dict, champion: dict | None, settings: GateSettings, *,
           paired: PairedPredictions | None = None, classes_changed: bool = False) -> GateDecision:  # fmt: skip
    """Gate `challenger` (an evaluation report) against `champion` (its report, or None).

    With a champion, `paired` (both models' predictions on the frames of the reports) is required:
    slices are judged on it. `classes_changed`: the champion predicts another class list.
    """
    metric = settings.metric
    ch_value = _metric(challenger, metric, "challenger")
    details: dict = {"min_slice_frames": settings.min_slice_frames, "critical_slices": list(settings.critical_slices)}
    slices: tuple[SliceDelta, ...] = ()
    if classes_changed and not settings.allow_new_classes:
        primary = PrimaryScore(metric, ch_value, None, settings.margin)
        passed, reason = False, ("the challenger's class list differs from the champion's: not comparable; "
                                 "set gate.allow_new_classes to judge it against the floor instead")  # fmt: skip
    elif champion is None or classes_changed:
        primary = PrimaryScore(metric, ch_value, None, settings.margin)
        passed = ch_value >= settings.floor - EPS
        what = "new class list" if classes_changed else "first model"
        reason = f"{what}: {metric} {ch_value:.4f} {'reaches' if passed else 'is below'} the floor {settings.floor:.4f}"
        details["floor"] = settings.floor
    else:
        if paired is None:
            raise ValueError("comparing with a champion needs both models' predictions on the same frames (paired)")
        cp_value = _metric(champion, metric, "champion")
        primary = PrimaryScore(metric, ch_value, cp_value, settings.margin)
        slices = slice_deltas(paired, settings)
        beats = ch_value - cp_value > settings.margin + EPS
        regressions = [s for s in slices if s.regressed]
        passed = beats and not regressions
        reason = _comparison_reason(primary, beats, regressions, settings.slice_tolerance)
        details |= {"delta": ch_value - cp_value, "slice_tolerance": settings.slice_tolerance,
                    "confidence": settings.confidence, "slices_not_gated": [s.slice for s in slices if not s.gated]}  # fmt: skip
    short = _critical_shortfalls(challenger, settings)
    if short and not (classes_changed and not settings.allow_new_classes):
        passed, reason = False, f"{'; '.join(short)}; {reason}"
    if settings.force:
        details = {**details, "would_have_passed": passed, "gate_reason": reason}
        return GateDecision(True, True, f"forced: {settings.force_reason} (gate: {reason})", primary, slices, details)
    return GateDecision(passed, False, reason, primary, slices, details)


def forced_by(settings: GateSettings) -> dict:
    """Who forced a promotion and why, from `gate.force_reason` ("alice: hotfix ..." names alice)."""
    reason = settings.force_reason or ""
    who, sep, _ = reason.partition(":")
    return {"who": who.strip() if sep else "config", "why": settings.force_reason}


def slice_deltas(paired: PairedPredictions, settings: GateSettings, *, seed: int = 0) -> tuple[SliceDelta, ...]:
    """Every slice's challenger - champion difference on the metric, with its paired bootstrap interval.

    Paired: each resample draws frames (with replacement) and scores both models on the same
    draw, so the interval reflects the difference, not two independent noises. Seeded: the same
    evidence always gives the same decision. Worst (lowest upper bound) first.
    """
    rng = np.random.default_rng(seed)
    alpha = (1.0 - settings.confidence) / 2
    y, a, b = (np.asarray(x, np.int64) for x in (paired.labels, paired.challenger, paired.champion))
    out = []
    for column, values in sorted(paired.slices.items()):
        values = np.asarray([str(v) for v in values])
        for value in np.unique(values).tolist():
            idx = np.flatnonzero(values == value)
            name, n = f"{column}={value}", len(idx)
            ch = _score(y[idx], a[idx], settings.metric, paired.num_classes)
            cp = _score(y[idx], b[idx], settings.metric, paired.num_classes)
            draws = idx[rng.integers(0, n, (settings.resamples, n))]  # (R, n) frame indices
            deltas = (_score_rows(y[draws], a[draws], settings.metric, paired.num_classes)
                      - _score_rows(y[draws], b[draws], settings.metric, paired.num_classes))  # fmt: skip
            low, high = np.quantile(deltas, [alpha, 1 - alpha]).tolist()
            gated = n >= settings.min_slice_frames
            regressed = gated and high < -settings.slice_tolerance - EPS
            out.append(SliceDelta(name, n, ch, cp, ch - cp, low, high, gated, regressed))
    return tuple(sorted(out, key=lambda s: (s.high, s.slice)))


def _critical_shortfalls(report: dict, settings: GateSettings) -> list[str]:
    """One "not enough fog frames to judge (31 < 100)" per critical slice below min_slice_frames."""
    per_slice = report.get("per_slice") or {}
    out = []
    for name in settings.critical_slices:
        n = int((per_slice.get(name) or {}).get("n", 0))
        if n < settings.min_slice_frames:
            label = name.split("=", 1)[-1]
            out.append(f"not enough {label} frames to judge ({n} < {settings.min_slice_frames})")
    return out


def _score(y: np.ndarray, pred: np.ndarray, metric: str, num_classes: int) -> float:
    return float(_score_rows(y[None], pred[None], metric, num_classes)[0])


def _score_rows(y: np.ndarray, pred: np.ndarray, metric: str, num_classes: int) -> np.ndarray:
    """Accuracy or macro-F1 of each row of (R, n) labels and predictions, as flywheel/evaluate.py defines them."""
    if metric == "accuracy":
        return (y == pred).mean(axis=1)
    r, c = len(y), num_classes
    flat = (np.arange(r)[:, None] * c * c + y * c + pred).ravel()
    cm = np.bincount(flat, minlength=r * c * c).reshape(r, c, c).astype(np.float64)  # (R, true, predicted)
    tp = np.einsum("rii->ri", cm)
    predicted, support = cm.sum(axis=1), cm.sum(axis=2)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (support + predicted) > 0  # classes in the labels or the predictions
    return np.where(present, f1, 0).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _metric(report: dict, metric: str, who: str) -> float:
    if not isinstance(report, dict) or metric not in report:
        raise ValueError(f"the {who} report has no {metric!r}: is it an evaluation report?")
    return float(report[metric])


def _comparison_reason(primary: PrimaryScore, beats: bool, regressions: list[SliceDelta], tolerance: float) -> str:
    delta = primary.challenger - primary.champion
    head = (
        f"{primary.name} {primary.challenger:.4f} vs champion {primary.champion:.4f} "
        f"(delta {delta:+.4f}, margin {primary.margin:.4f})"
    )
    if not beats:
        head += ": does not beat the champion by more than the margin"
    if regressions:
        worst = ", ".join(f"{r.slice} {r.delta:+.4f} [{r.low:+.3f}, {r.high:+.3f}]" for r in regressions[:3])
        more = f" and {len(regressions) - 3} more" if len(regressions) > 3 else ""
        head += f"; {len(regressions)} slice(s) regress beyond {tolerance:.4f}: {worst}{more}"
    if beats and not regressions:
        head += ": beats the champion, no slice regression"
    return head
