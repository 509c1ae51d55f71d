"""COCO-style detection metrics by pycocotools' COCOeval: mAP@[.5:.95], mAP@.5, per class and per slice.

Ground truth: per image, [(class index, x, y, w, h)]; detections: per image, [(class index, score, x, y,
w, h)], both in pixels of the same frame. Images without boxes count (their detections are false
positives); a class with no true box in the images scored has no AP (None), as COCOeval leaves it.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def coco_map(truth: Sequence[Sequence[tuple]], detections: Sequence[Sequence[tuple]], classes: Sequence[str],
             *, slices: dict[str, Sequence[str]] | None = None) -> dict:  # fmt: skip
    """{"map": mAP@[.5:.95], "map50": mAP@.5, "per_class": {class: {"map", "map50"}}, "images", "boxes",
    "per_slice": {"<key>=<value>": {"map", "map50", "images"}}}; `slices`: per key, each image's value
    (e.g. {"condition": ["day", "fog", ...]})."""
    if len(truth) != len(detections):
        raise ValueError(f"{len(truth)} images of ground truth but {len(detections)} of detections")
    out = _evaluate(truth, detections, classes, range(len(truth)))
    out["per_slice"] = {}
    for key, values in (slices or {}).items():
        if len(values) != len(truth):
            raise ValueError(f"slice {key!r} has {len(values)} values for {len(truth)} images")
        for value in sorted(set(values)):
            chosen = [i for i, v in enumerate(values) if v == value]
            r = _evaluate(truth, detections, classes, chosen)
            out["per_slice"][f"{key}={value}"] = {"map": r["map"], "map50": r["map50"], "images": r["images"]}
    return out


def _coco_eval(truth, detections, classes, images):
    """COCOeval over `images` after evaluate() (the per-image matching), or None when they hold no true box."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {"images": [{"id": i} for i in images], "categories": [{"id": c, "name": n} for c, n in enumerate(classes)],
          "annotations": []}  # fmt: skip
    dets = []
    for i in images:
        for cls, x, y, w, h in truth[i]:
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": int(cls),
                                      "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h), "iscrowd": 0})  # fmt: skip
        for cls, score, x, y, w, h in detections[i]:
            dets.append({"image_id": i, "category_id": int(cls), "score": float(score),
                         "bbox": [float(x), float(y), float(w), float(h)]})  # fmt: skip
    if not gt["annotations"]:
        return None
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        found = coco.loadRes(dets) if dets else COCO()
        if not dets:
            found.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            found.createIndex()
        ev = COCOeval(coco, found, "bbox")
        ev.params.imgIds = images
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
    return ev


def _evaluate(truth, detections, classes, images) -> dict:
    images = list(images)
    result = {"images": len(images), "boxes": sum(len(truth[i]) for i in images), "map": None, "map50": None,
              "per_class": {n: {"map": None, "map50": None} for n in classes}}  # fmt: skip
    ev = _coco_eval(truth, detections, classes, images)
    if ev is None:
        return result
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
    precision = ev.eval["precision"]  # (iou thresholds, recall points, classes, areas, max dets)
    result["map"], result["map50"] = _mean(precision[:, :, :, 0, -1]), _mean(precision[0, :, :, 0, -1])
    for c, name in enumerate(classes):
        result["per_class"][name] = {"map": _mean(precision[:, :, c, 0, -1]), "map50": _mean(precision[0, :, c, 0, -1])}
    return result


def _mean(p: np.ndarray) -> float | None:
    """COCOeval's mean over the precision cells that exist (-1: no true box of that class)."""
    valid = p[p > -1]
    return round(float(valid.mean()), 4) if valid.size else None


@dataclass(frozen=True)
class Matches:
    """COCOeval's matching of detections to true boxes, done once, per class: every detection (at most 100
    per image, all images) sorted by score as COCOeval sorts them, the image it is in, whether it is a true
    positive or ignored at each IoU threshold (T, D), and the true boxes per image."""

    images: int
    per_class: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None]  # image, tp, ignored, gts per image


def match(truth: Sequence[Sequence[tuple]], detections: Sequence[Sequence[tuple]], classes: Sequence[str]) -> Matches:
    if len(truth) != len(detections):
        raise ValueError(f"{len(truth)} images of ground truth but {len(detections)} of detections")
    n = len(truth)
    ev = _coco_eval(truth, detections, classes, range(n))
    per_class: list = [None] * len(classes)
    if ev is None:
        return Matches(n, per_class)
    areas = len(ev.params.areaRng)
    for k in range(len(classes)):
        found = [(i, e) for i in range(n) if (e := ev.evalImgs[k * areas * n + i]) is not None]  # area range "all"
        if not found:
            continue
        image = np.concatenate([np.full(len(e["dtScores"]), i) for i, e in found]).astype(np.int64)
        scores = np.concatenate([e["dtScores"] for _, e in found])
        order = np.argsort(-scores, kind="mergesort")
        tp = np.concatenate([e["dtMatches"] for _, e in found], axis=1)[:, order] > 0
        ignored = np.concatenate([e["dtIgnore"] for _, e in found], axis=1)[:, order].astype(bool)
        gts = np.zeros(n)
        for i, e in found:
            gts[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
        per_class[k] = (image[order], tp, ignored, gts)
    return Matches(n, per_class)


RECALLS = np.linspace(0, 1, 101)  # COCOeval's recall thresholds


def weighted_map(m: Matches, weights: np.ndarray, *, iou50: bool = False) -> float | None:
    """mAP (mAP@.5 with `iou50`) over images counted `weights` times each (a bootstrap resample; all ones:
    COCOeval's own figure), as COCOeval accumulates it: per class and IoU threshold, the precision
    envelope at 101 recall points, averaged over the classes with a true box among the weighted images."""
    aps = []
    for entry in m.per_class:
        if entry is None:
            continue
        image, tp, ignored, gts = entry
        npig = float(weights @ gts)
        if npig == 0:
            continue
        w = weights[image]
        for t in range(1 if iou50 else len(tp)):
            keep = ~ignored[t]
            tps = np.cumsum(w * (tp[t] & keep))
            fps = np.cumsum(w * (~tp[t] & keep))
            if not len(tps):
                aps.append(0.0)
                continue
            recall, precision = tps / npig, tps / (tps + fps + np.spacing(1))
            envelope = np.maximum.accumulate(precision[::-1])[::-1]
            at = np.searchsorted(recall, RECALLS, side="left")
            aps.append(float(np.where(at < len(envelope), envelope[np.minimum(at, len(envelope) - 1)], 0.0).mean()))
    return float(np.mean(aps)) if aps else None


def paired_bootstrap(truth: Sequence[Sequence[tuple]], before: Sequence[Sequence[tuple]], after: Sequence[Sequence[tuple]],
                     classes: Sequence[str], *, iou50: bool = True, images: Sequence[int] | None = None,
                     resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:  # fmt: skip
    """`after`'s mAP (mAP@.5 with `iou50`) minus `before`'s on the same frames, with a percentile interval
    from resampling the frames (`images`: a slice's; default all) with replacement, the same resample
    for both: {"before", "after", "diff", "low", "high", "frames", "boxes", "resamples"}; None values
    where the frames hold no true box."""
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError(f"paired_bootstrap needs 0 < confidence < 1 and resamples >= 1, got {confidence}, {resamples}")
    a, b = match(truth, before, classes), match(truth, after, classes)
    chosen = np.arange(len(truth)) if images is None else np.asarray(images, dtype=np.int64)
    ones = np.zeros(len(truth))
    ones[chosen] = 1
    base_a, base_b = weighted_map(a, ones, iou50=iou50), weighted_map(b, ones, iou50=iou50)
    out = {"before": base_a, "after": base_b, "diff": None, "low": None, "high": None, "frames": len(chosen),
           "boxes": sum(len(truth[i]) for i in chosen), "resamples": resamples}  # fmt: skip
    if base_a is None or base_b is None:
        return out
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        w = np.zeros(len(truth))
        np.add.at(w, rng.choice(chosen, size=len(chosen)), 1)
        x, y = weighted_map(a, w, iou50=iou50), weighted_map(b, w, iou50=iou50)
        if x is not None and y is not None:
            diffs.append(y - x)
    low, high = np.quantile(diffs, [(1 - confidence) / 2, (1 + confidence) / 2])
    out.update(diff=round(base_b - base_a, 4), low=round(float(low), 4), high=round(float(high), 4))
    return out


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def box_trust(truth: Sequence[Sequence[tuple]], detections: Sequence[Sequence[tuple]], classes: Sequence[str], *,
              min_score: float, min_precision: float, min_support: int, min_iou: float = 0.5) -> dict:  # fmt: skip
    """Per class, the precision of the detections at or above `min_score` (each matched greedily, best score
    first, to an unmatched true box of its class at IoU >= `min_iou`): the auto labels it would give.
    `{"trusted": [class index], "per_class": {name: {"confident", "correct", "precision", "trusted"}}, "frames"}`;
    a class is trusted with at least `min_support` such detections and a precision of `min_precision`."""
    if len(truth) != len(detections):
        raise ValueError(f"{len(truth)} images of ground truth but {len(detections)} of detections")
    sure, right = np.zeros(len(classes), int), np.zeros(len(classes), int)
    for gts, dets in zip(truth, detections, strict=True):
        free = list(gts)
        for c, _, *box in sorted((d for d in dets if d[1] >= min_score), key=lambda d: -d[1]):
            sure[c] += 1
            best = max((g for g in free if g[0] == c), key=lambda g: iou(box, g[1:]), default=None)
            if best is not None and iou(box, best[1:]) >= min_iou:
                right[c] += 1
                free.remove(best)
    per_class, trusted = {}, []
    for k, name in enumerate(classes):
        precision = right[k] / sure[k] if sure[k] else None
        ok = bool(sure[k] >= min_support and precision is not None and precision >= min_precision)
        per_class[name] = {"confident": int(sure[k]), "correct": int(right[k]), "precision": precision, "trusted": ok}
        trusted += [k] if ok else []
    return {"trusted": trusted, "per_class": per_class, "frames": len(truth)}
