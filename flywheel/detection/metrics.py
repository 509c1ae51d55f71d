"""COCO-style detection metrics by pycocotools' COCOeval: mAP@[.5:.95], mAP@.5, per class and per slice.

Ground truth: per image, [(class index, x, y, w, h)]; detections: per image, [(class index, score, x, y,
w, h)], both in pixels of the same frame. Images without boxes count (their detections are false
positives); a class with no true box in the images scored has no AP (None), as COCOeval leaves it.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

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


def _evaluate(truth, detections, classes, images) -> dict:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = list(images)
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
    result = {"images": len(images), "boxes": len(gt["annotations"]), "map": None, "map50": None,
              "per_class": {n: {"map": None, "map50": None} for n in classes}}  # fmt: skip
    if not gt["annotations"]:
        return result
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
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # (iou thresholds, recall points, classes, areas, max dets)
    result["map"], result["map50"] = _mean(precision[:, :, :, 0, -1]), _mean(precision[0, :, :, 0, -1])
    for c, name in enumerate(classes):
        result["per_class"][name] = {"map": _mean(precision[:, :, c, 0, -1]), "map50": _mean(precision[0, :, c, 0, -1])}
    return result


def _mean(p: np.ndarray) -> float | None:
    """COCOeval's mean over the precision cells that exist (-1: no true box of that class)."""
    valid = p[p > -1]
    return round(float(valid.mean()), 4) if valid.size else None
