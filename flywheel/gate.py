"""The promotion gate (DESIGN.md §4): does the challenger replace the champion?

- With a champion: the challenger's primary metric must beat the champion's by more than
  `margin`, and no slice with at least `min_slice_frames` frames on both sides may drop by
  more than `slice_tolerance` (on the same metric).
- First model (no champion): the primary metric must reach the absolute `floor`.
- Forced (`force` with `force_reason`): passes, and the decision records it was forced, why,
  and what the gate would have said.

A failed gate is a normal outcome: `decide` returns `passed=False` with the reason. It only
raises for a report it cannot read (e.g. the metric is missing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from flywheel.config import GateSettings

EPS = 1e-9  # metrics closer than this are equal: a float tie is not a win


class PrimaryScore(NamedTuple):
    name: str
    challenger: float
    champion: float | None
    margin: float


class SliceRegression(NamedTuple):
    slice: str
    challenger: float
    champion: float
    drop: float


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    forced: bool
    reason: str
    primary: PrimaryScore
    slice_regressions: tuple[SliceRegression, ...] = ()
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-able form, for the deploy manifest, MLflow tags and asset check metadata."""
        return {
            "passed": self.passed,
            "forced": self.forced,
            "reason": self.reason,
            "primary": self.primary._asdict(),
            "slice_regressions": [r._asdict() for r in self.slice_regressions],
            "details": self.details,
        }


def decide(challenger: dict, champion: dict | None, settings: GateSettings) -> GateDecision:
    """Gate `challenger` (an evaluation report) against `champion` (its report, or None)."""
    metric = settings.metric
    ch_value = _metric(challenger, metric, "challenger")
    if champion is None:
        primary = PrimaryScore(metric, ch_value, None, settings.margin)
        regressions: tuple[SliceRegression, ...] = ()
        passed = ch_value >= settings.floor - EPS
        reason = (
            f"first model: {metric} {ch_value:.4f} "
            f"{'reaches' if passed else 'is below'} the floor {settings.floor:.4f}"
        )
        details = {"floor": settings.floor}
    else:
        cp_value = _metric(champion, metric, "champion")
        primary = PrimaryScore(metric, ch_value, cp_value, settings.margin)
        regressions, skipped = slice_regressions(challenger, champion, settings)
        beats = ch_value - cp_value > settings.margin + EPS
        passed = beats and not regressions
        reason = _comparison_reason(primary, beats, regressions, settings.slice_tolerance)
        details = {
            "delta": ch_value - cp_value,
            "slice_tolerance": settings.slice_tolerance,
            "min_slice_frames": settings.min_slice_frames,
            "slices_not_gated": skipped,
        }
    if settings.force:
        details = {**details, "would_have_passed": passed, "gate_reason": reason}
        return GateDecision(True, True, f"forced: {settings.force_reason} (gate: {reason})",
                            primary, regressions, details)  # fmt: skip
    return GateDecision(passed, False, reason, primary, regressions, details)


def forced_by(settings: GateSettings) -> dict:
    """Who forced a promotion and why, from `gate.force_reason` ("alice: hotfix ..." names alice)."""
    reason = settings.force_reason or ""
    who, sep, _ = reason.partition(":")
    return {"who": who.strip() if sep else "config", "why": settings.force_reason}


def slice_regressions(
    challenger: dict, champion: dict, settings: GateSettings
) -> tuple[tuple[SliceRegression, ...], list[str]]:
    """Slices whose metric drops by more than the tolerance, worst first; and the slices not gated.

    A slice is gated only when both reports have it with at least `min_slice_frames` frames.
    """
    ch_slices = challenger.get("per_slice") or {}
    cp_slices = champion.get("per_slice") or {}
    regressions, skipped = [], []
    for name in sorted(set(ch_slices) | set(cp_slices)):
        a, b = ch_slices.get(name), cp_slices.get(name)
        if a is None or b is None or min(a["n"], b["n"]) < settings.min_slice_frames:
            skipped.append(name)
            continue
        drop = b[settings.metric] - a[settings.metric]
        if drop > settings.slice_tolerance + EPS:
            regressions.append(SliceRegression(name, a[settings.metric], b[settings.metric], drop))
    regressions.sort(key=lambda r: -r.drop)
    return tuple(regressions), skipped


def _metric(report: dict, metric: str, who: str) -> float:
    if not isinstance(report, dict) or metric not in report:
        raise ValueError(f"the {who} report has no {metric!r}: is it an evaluation report?")
    return float(report[metric])


def _comparison_reason(
    primary: PrimaryScore, beats: bool, regressions: tuple[SliceRegression, ...], tolerance: float
) -> str:
    delta = primary.challenger - primary.champion
    head = (
        f"{primary.name} {primary.challenger:.4f} vs champion {primary.champion:.4f} "
        f"(delta {delta:+.4f}, margin {primary.margin:.4f})"
    )
    if not beats:
        head += ": does not beat the champion by more than the margin"
    if regressions:
        worst = ", ".join(f"{r.slice} -{r.drop:.4f}" for r in regressions[:3])
        more = f" and {len(regressions) - 3} more" if len(regressions) > 3 else ""
        head += f"; {len(regressions)} slice(s) drop more than {tolerance:.4f}: {worst}{more}"
    if beats and not regressions:
        head += ": beats the champion, no slice regression"
    return head
