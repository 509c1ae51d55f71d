"""The promotion gate on boxes: the classifier's rules (flywheel/evaluation/gate.py) with mAP@.5 as the metric.

Both models detect on the same frames; every difference is judged with a paired bootstrap over those
frames (`metrics.paired_bootstrap`: each resample draws frames with replacement and recomputes both
models' mAP@.5 on the draw, COCOeval's accumulation on the draw's weights).

- First model: its mAP@.5 must reach `detection.floor`.
- With a champion: the lower end of the overall gain's interval must clear `gate.margin` (or, with
  `gate.promote: no_worse_on_newer_data`, lie above -`slice_tolerance` for a challenger on newer data).
- Slices: each condition, camera and trigger (`condition=fog`), judged on the frames of that slice, and
  each class (`class=pedestrian`), judged on its AP@.5 over all frames (its false positives anywhere
  count), its n the frames holding a true box of it. A slice with at least `min_slice_frames` frames is
  gated and must be shown non-inferior at -`slice_tolerance`; a smaller one is inconclusive, which fails
  closed for `critical_slices`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flywheel.config import GateSettings
from flywheel.detection.metrics import paired_bootstrap
from flywheel.evaluation.gate import (
    EPS,
    INCONCLUSIVE,
    NON_INFERIOR,
    REGRESSED,
    UNPROVEN,
    GateDecision,
    PrimaryScore,
    SliceDelta,
    _comparison_reason,
    _critical_shortfalls,
    is_critical,
)

METRIC = "map50"


def decide_boxes(challenger: dict, champion: dict | None, settings: GateSettings, *, floor: float,
                 truth: Sequence[Sequence[tuple]] | None = None, ch_dets: Sequence[Sequence[tuple]] | None = None,
                 champ_dets: Sequence[Sequence[tuple]] | None = None, slices: dict[str, Sequence[str]] | None = None,
                 classes: Sequence[str] = (), newer_data: bool = False) -> GateDecision:  # fmt: skip
    """Gate `challenger` (a `coco_map` report with per-slice `n`) against `champion` (its report or None);
    with a champion, `truth` and both models' detections on the report's frames are the evidence."""
    ch_value = challenger.get(METRIC)
    if ch_value is None:
        raise ValueError("the challenger's report has no mAP@.5: its frames hold no true box")
    details: dict = {"min_slice_frames": settings.min_slice_frames, "critical_slices": list(settings.critical_slices),
                     "promote": settings.promote}  # fmt: skip
    if champion is None or champion.get(METRIC) is None:
        passed = ch_value >= floor - EPS
        reason = f"first model: {METRIC} {ch_value:.4f} {'reaches' if passed else 'is below'} the floor {floor:.4f}"
        short = _critical_shortfalls(challenger, settings)
        if short:
            reason += f" (too few frames to judge, listed: {'; '.join(short)})"
        details |= {"floor": floor, "rule": "floor" if passed else None, "inconclusive_critical": short}
        return GateDecision(passed, reason, PrimaryScore(METRIC, ch_value, None, settings.margin), (), details)
    if truth is None or ch_dets is None or champ_dets is None:
        raise ValueError("comparing with a champion needs the true boxes and both models' detections on the same frames")
    boot = {"resamples": settings.resamples, "confidence": settings.confidence}
    overall = paired_bootstrap(truth, champ_dets, ch_dets, classes, **boot)
    primary = PrimaryScore(METRIC, overall["after"], overall["before"], settings.margin, overall["low"], overall["high"])
    deltas = _slice_deltas(truth, ch_dets, champ_dets, slices or {}, classes, settings, boot)
    blocking = [s for s in deltas if s.blocks]
    rule = None
    if primary.low is not None and primary.low > settings.margin + EPS:
        rule = "superior"
    elif (settings.promote == "no_worse_on_newer_data" and newer_data and primary.low is not None
          and primary.low > -settings.slice_tolerance + EPS):  # fmt: skip
        rule = "no worse on newer data"
    passed = rule is not None and not blocking
    details |= {"delta": primary.challenger - primary.champion, "slice_tolerance": settings.slice_tolerance,
                "confidence": settings.confidence, "rule": rule if passed else None, "newer_data": newer_data,
                "inconclusive": [f"{s.slice} ({s.n})" for s in deltas if s.status == INCONCLUSIVE]}  # fmt: skip
    return GateDecision(passed, _comparison_reason(primary, rule, blocking, settings, newer_data), primary, deltas, details)


def _slice_deltas(truth, ch_dets, champ_dets, slices: dict[str, Sequence[str]], classes: Sequence[str],
                  settings: GateSettings, boot: dict) -> tuple[SliceDelta, ...]:  # fmt: skip
    """Every slice's challenger - champion mAP@.5 with its paired interval and status, worst first."""
    judged = []  # (name, n, bootstrap result)
    for column, values in sorted(slices.items()):
        values = np.asarray([str(v) for v in values])
        for value in np.unique(values).tolist():
            idx = np.flatnonzero(values == value)
            judged.append((f"{column}={value}", len(idx), paired_bootstrap(truth, champ_dets, ch_dets, classes,
                                                                          images=idx, **boot)))  # fmt: skip
    for k, name in enumerate(classes):
        n = sum(any(b[0] == k for b in frame) for frame in truth)
        if not n:
            continue
        only = [[b for b in frame if b[0] == k] for frame in truth]
        judged.append((f"class={name}", n, paired_bootstrap(only, [[d for d in f if d[0] == k] for f in champ_dets],
                                                            [[d for d in f if d[0] == k] for f in ch_dets], classes, **boot)))  # fmt: skip
    out = []
    for name, n, r in judged:
        if r["diff"] is None:
            continue  # no true box in the slice: nothing to judge
        critical, enough = is_critical(name, settings), n >= settings.min_slice_frames
        tol = settings.slice_tolerance
        if not enough:
            status = INCONCLUSIVE
        elif r["low"] > -tol + EPS:
            status = NON_INFERIOR
        elif r["high"] < -tol - EPS:
            status = REGRESSED
        else:
            status = UNPROVEN
        out.append(SliceDelta(name, n, r["after"], r["before"], r["diff"], r["low"], r["high"], enough or critical,
                              critical, status))  # fmt: skip
    return tuple(sorted(out, key=lambda s: (s.low, s.slice)))
