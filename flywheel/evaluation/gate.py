"""The promotion gate (DESIGN.md §4): does the challenger replace the champion?

The burden of proof is on the challenger. Both models are scored on the same frames, so every
difference is judged with a paired bootstrap interval (`confidence`, `resamples`):

- Promotion: the lower end of the overall difference's interval must clear `margin` (the gain is
  shown, not a point estimate that noise can produce). `promote: no_worse_on_newer_data` adds an
  opt-in rule for ties: a challenger trained on a newer dataset version than the champion's passes
  when the lower end is above -`slice_tolerance`. The decision records which rule promoted.
- Every slice (`column=value`; `class=<name>` is judged on recall, the rest on `metric`) is
  *non-inferior* when the lower end of its interval is above -`slice_tolerance`. A slice with at
  least `min_slice_frames` frames is gated: it must be non-inferior, and a drop that is merely not
  proven (the interval straddles -tolerance) fails as surely as a proven one. A smaller slice is
  *inconclusive*: shown with its n, not gated, except the `critical_slices` (`condition=*` is every
  condition the frames name, `class=*` every class), where inconclusive fails closed
  ("condition=fog: inconclusive, 29 frames < 100").
- First model (no champion): the primary metric must reach the absolute `floor`; critical slices
  with too few frames are listed (there is no served model they could regress from).
- A challenger whose class list differs from the champion's is not comparable: it fails unless
  `allow_new_classes` is set, and then it is judged like a first model (the floor).
- The gate only judges: a person may still deploy a challenger it kept, for that one version, with
  `flywheel force vN --reason WHY` (`approvals.force`, recorded with the account that forced it).

The defaults were chosen by simulation (`flywheel bench gate`, BENCHMARKS.md): replayed turns with
known effects, the old and the new rule's false-promotion and false-block rates, and the frames a
slice needs. A failed gate is a normal outcome: `decide` returns `passed=False` with the reason. It
raises only for input it cannot read (a report without the metric, predictions of different lengths).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import NamedTuple

import numpy as np

from flywheel.config import GateSettings

EPS = 1e-9  # metrics closer than this are equal: a float tie is not a win
OVERALL = "overall"
# a slice's status: non-inferior, proven worse, drop neither shown nor ruled out, too few frames
NON_INFERIOR, REGRESSED, UNPROVEN, INCONCLUSIVE = "non-inferior", "regressed", "not shown non-inferior", "inconclusive"


class PrimaryScore(NamedTuple):
    name: str
    challenger: float
    champion: float | None
    margin: float
    low: float | None = None  # paired interval of challenger - champion over all frames
    high: float | None = None


class SliceDelta(NamedTuple):
    """One slice, challenger vs champion on the same frames: scores, difference and its interval."""

    slice: str
    n: int
    challenger: float
    champion: float
    delta: float  # challenger - champion
    low: float  # paired bootstrap interval of delta
    high: float
    gated: bool  # judged: enough frames, or critical
    critical: bool
    status: str  # NON_INFERIOR, REGRESSED, UNPROVEN or INCONCLUSIVE

    @property
    def blocks(self) -> bool:
        """Whether this slice stops the promotion: gated and not shown non-inferior."""
        return self.gated and self.status != NON_INFERIOR


@dataclass(frozen=True)
class PairedPredictions:
    """Both models' predicted classes on the same evaluation frames: the evidence for the intervals."""

    labels: np.ndarray  # (N,) true class index
    challenger: np.ndarray  # (N,) predicted class index
    champion: np.ndarray  # (N,)
    slices: dict[str, list[str]]  # metadata column -> N values; each value is a slice "<column>=<value>"
    num_classes: int
    class_names: list[str] | None = None  # adds the slices class=<name> (judged on recall)

    def __post_init__(self):
        n = len(self.labels)
        for name, arr in (("challenger", self.challenger), ("champion", self.champion)):
            if len(arr) != n:
                raise ValueError(f"{name} predictions have {len(arr)} entries for {n} labels")
        for column, values in self.slices.items():
            if len(values) != n:
                raise ValueError(f"slice column {column!r} has {len(values)} values for {n} frames")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    def columns(self) -> dict[str, list[str]]:
        """The slice columns, with `class` (each frame's true class name) when the names are known."""
        if self.class_names is None:
            return self.slices
        return {**self.slices, "class": [self.class_names[int(k)] for k in self.labels]}


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    primary: PrimaryScore
    slices: tuple[SliceDelta, ...] = ()
    details: dict = field(default_factory=dict)

    @property
    def blocking(self) -> tuple[SliceDelta, ...]:
        """The slices that stop the promotion (gated, not shown non-inferior)."""
        return tuple(s for s in self.slices if s.blocks)

    @property
    def slice_regressions(self) -> tuple[SliceDelta, ...]:
        """The slices proven worse than -slice_tolerance."""
        return tuple(s for s in self.slices if s.status == REGRESSED)

    def to_dict(self) -> dict:
        """JSON-able form, for the deploy manifest, MLflow tags and asset check metadata."""
        return {
            "passed": self.passed,
            "reason": self.reason,
            "rule": self.details.get("rule"),
            "primary": self.primary._asdict(),
            "slices": [{**s._asdict(), "blocks": s.blocks} for s in self.slices],
            "blocking": [s.slice for s in self.blocking],
            "slice_regressions": [s._asdict() for s in self.slice_regressions],
            "details": self.details,
        }


def decide(challenger: dict, champion: dict | None, settings: GateSettings, *,
           paired: PairedPredictions | None = None, classes_changed: bool = False,
           newer_data: bool = False) -> GateDecision:  # fmt: skip
    """Gate `challenger` (an evaluation report) against `champion` (its report, or None).

    With a champion, `paired` (both models' predictions on the frames of the reports) is required:
    the overall gain and every slice are judged on it. `classes_changed`: the champion predicts
    another class list. `newer_data`: the challenger trained on a newer dataset version than the
    champion (the opt-in tie rule needs it).
    """
    metric = settings.metric
    ch_value = _metric(challenger, metric, "challenger")
    details: dict = {"min_slice_frames": settings.min_slice_frames, "critical_slices": list(settings.critical_slices),
                     "promote": settings.promote}  # fmt: skip
    slices: tuple[SliceDelta, ...] = ()
    if classes_changed and not settings.allow_new_classes:
        primary = PrimaryScore(metric, ch_value, None, settings.margin)
        passed, reason = False, ("the challenger's class list differs from the champion's: not comparable; "
                                 "set gate.allow_new_classes to judge it against the floor instead")  # fmt: skip
        details["rule"] = None
    elif champion is None or classes_changed:
        primary = PrimaryScore(metric, ch_value, None, settings.margin)
        passed = ch_value >= settings.floor - EPS
        what = "new class list" if classes_changed else "first model"
        reason = f"{what}: {metric} {ch_value:.4f} {'reaches' if passed else 'is below'} the floor {settings.floor:.4f}"
        short = _critical_shortfalls(challenger, settings)
        if short:
            reason += f" (too few frames to judge, listed: {'; '.join(short)})"
        details |= {"floor": settings.floor, "rule": "floor" if passed else None, "inconclusive_critical": short}
    else:
        if paired is None:
            raise ValueError("comparing with a champion needs both models' predictions on the same frames (paired)")
        cp_value = _metric(champion, metric, "champion")
        low, high = overall_interval(paired, settings)
        primary = PrimaryScore(metric, ch_value, cp_value, settings.margin, low, high)
        slices = slice_deltas(paired, settings)
        blocking = [s for s in slices if s.blocks]
        rule = None
        if low > settings.margin + EPS:
            rule = "superior"
        elif settings.promote == "no_worse_on_newer_data" and newer_data and low > -settings.slice_tolerance + EPS:
            rule = "no worse on newer data"
        passed = rule is not None and not blocking
        reason = _comparison_reason(primary, rule, blocking, settings, newer_data)
        details |= {"delta": ch_value - cp_value, "slice_tolerance": settings.slice_tolerance,
                    "confidence": settings.confidence, "rule": rule if passed else None,
                    "newer_data": newer_data,
                    "inconclusive": [f"{s.slice} ({s.n})" for s in slices if s.status == INCONCLUSIVE]}  # fmt: skip
    return GateDecision(passed, reason, primary, slices, details)


def is_critical(name: str, settings: GateSettings) -> bool:
    """Whether slice `name` ("condition=fog") matches one of `critical_slices` ("condition=*", "class=car")."""
    return any(fnmatchcase(name, pattern) for pattern in settings.critical_slices)


def overall_interval(paired: PairedPredictions, settings: GateSettings, *, seed: int = 0) -> tuple[float, float]:
    """The paired bootstrap interval of challenger - champion on the metric over all frames."""
    idx = np.arange(len(paired.labels))
    return _interval(paired, idx, settings.metric, settings, np.random.default_rng(seed))


def slice_deltas(paired: PairedPredictions, settings: GateSettings, *, seed: int = 0) -> tuple[SliceDelta, ...]:
    """Every slice's challenger - champion difference, its paired bootstrap interval and status.

    Paired: each resample draws frames (with replacement) and scores both models on the same
    draw, so the interval reflects the difference, not two independent noises. Seeded: the same
    evidence always gives the same decision. Worst (lowest lower bound) first.
    """
    rng = np.random.default_rng(seed)
    y, a, b = (np.asarray(x, np.int64) for x in (paired.labels, paired.challenger, paired.champion))
    tol, out = settings.slice_tolerance, []
    for column, values in sorted(paired.columns().items()):
        metric = "accuracy" if column == "class" else settings.metric  # a class's slice: its recall
        values = np.asarray([str(v) for v in values])
        for value in np.unique(values).tolist():
            idx = np.flatnonzero(values == value)
            name, n = f"{column}={value}", len(idx)
            ch = _score(y[idx], a[idx], metric, paired.num_classes)
            cp = _score(y[idx], b[idx], metric, paired.num_classes)
            low, high = _interval(paired, idx, metric, settings, rng)
            critical = is_critical(name, settings)
            enough = n >= settings.min_slice_frames
            if not enough:
                status = INCONCLUSIVE
            elif low > -tol + EPS:
                status = NON_INFERIOR
            elif high < -tol - EPS:
                status = REGRESSED
            else:
                status = UNPROVEN
            out.append(SliceDelta(name, n, ch, cp, ch - cp, low, high, enough or critical, critical, status))
    return tuple(sorted(out, key=lambda s: (s.low, s.slice)))


def _interval(paired: PairedPredictions, idx: np.ndarray, metric: str, settings: GateSettings,
              rng: np.random.Generator) -> tuple[float, float]:  # fmt: skip
    y, a, b = (np.asarray(x, np.int64) for x in (paired.labels, paired.challenger, paired.champion))
    draws = idx[rng.integers(0, len(idx), (settings.resamples, len(idx)))]  # (R, n) frame indices
    deltas = (_score_rows(y[draws], a[draws], metric, paired.num_classes)
              - _score_rows(y[draws], b[draws], metric, paired.num_classes))  # fmt: skip
    alpha = (1.0 - settings.confidence) / 2
    low, high = np.quantile(deltas, [alpha, 1 - alpha]).tolist()
    return low, high


def _critical_shortfalls(report: dict, settings: GateSettings) -> list[str]:
    """One "condition=fog: 31 < 100 frames" per critical slice of the report below min_slice_frames;
    a named critical slice the report lacks counts 0 frames."""
    per_slice = report.get("per_slice") or {}
    names = set(per_slice) | {p for p in settings.critical_slices if not any(c in p for c in "*?[")}
    out = []
    for name in sorted(n for n in names if is_critical(n, settings)):
        n = int((per_slice.get(name) or {}).get("n", 0))
        if n < settings.min_slice_frames:
            out.append(f"{name}: {n} < {settings.min_slice_frames} frames")
    return out


def _score(y: np.ndarray, pred: np.ndarray, metric: str, num_classes: int) -> float:
    return float(_score_rows(y[None], pred[None], metric, num_classes)[0])


def _score_rows(y: np.ndarray, pred: np.ndarray, metric: str, num_classes: int) -> np.ndarray:
    """Accuracy or macro-F1 of each row of (R, n) labels and predictions, as flywheel/evaluation/evaluate.py defines them."""
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


def _comparison_reason(primary: PrimaryScore, rule: str | None, blocking: list[SliceDelta],
                       settings: GateSettings, newer_data: bool) -> str:  # fmt: skip
    delta = primary.challenger - primary.champion
    pct = round(settings.confidence * 100)
    head = (
        f"{primary.name} {primary.challenger:.4f} vs champion {primary.champion:.4f} "
        f"(delta {delta:+.4f}, {pct} % interval [{primary.low:+.4f}, {primary.high:+.4f}], margin {primary.margin:.4f})"
    )
    if rule == "superior":
        head += ": the gain clears the margin"
    elif rule is not None:
        head += f": no worse than -{settings.slice_tolerance:.4f}, trained on newer data"
    else:
        head += ": the gain does not clear the margin"
        if settings.promote == "no_worse_on_newer_data":
            head += " and " + ("it is not shown no worse" if newer_data else "it was not trained on newer data")
    if blocking:
        shown = ", ".join(_slice_words(s, settings.min_slice_frames) for s in blocking[:3])
        more = f" and {len(blocking) - 3} more" if len(blocking) > 3 else ""
        head += (f"; {len(blocking)} slice(s) not shown non-inferior at -{settings.slice_tolerance:.4f}: "
                 f"{shown}{more}")  # fmt: skip
    elif rule is not None:
        head += "; every gated slice non-inferior"
    return head


def _slice_words(s: SliceDelta, min_frames: int) -> str:
    if s.status == INCONCLUSIVE:
        return f"{s.slice} inconclusive, critical ({s.n} < {min_frames} frames)"
    return f"{s.slice} {s.delta:+.4f} [{s.low:+.3f}, {s.high:+.3f}] {s.status} (n={s.n})"
