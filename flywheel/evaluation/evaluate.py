"""Evaluation: score a model on the test split + golden set, by class, by slice, under corruption.

Challenger and champion are scored with the same functions on the same frames (DESIGN.md §4).
Metrics are plain numpy so the numbers are easy to check by hand:

- `accuracy`, `macro_f1` (mean F1 over the classes that occur in the labels or the predictions:
  a class absent from both has no F1 and is left out, a class only predicted scores 0);
- per class precision / recall / F1 / support (undefined ratios are 0, as sklearn's
  `zero_division=0`);
- per slice (`"condition=fog"`, `"trigger=hard_brake"`, ...) accuracy, macro-F1 and frame count;
- expected calibration error over 15 equal-width confidence bins;
- accuracy and macro-F1 under albumentations corruptions (noise, motion blur, fog, rain).

A report is a JSON-able dict; `flat_metrics` turns it into MLflow-safe metric names and
`compare` into the challenger/champion table shown in the UI.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import torch

from flywheel import progress as bars
from flywheel.model_input import check_input
from flywheel.predict import predict

ECE_BINS = 15
CORRUPTIONS = ("gauss_noise", "motion_blur", "fog", "rain")
# Corruption -> most frames it is applied to: RandomFog costs ~6.5 ms per 64x64 frame, ~50x the others.
SLOW_CORRUPTIONS = {"fog": 256}


# ---------------------------------------------------------------------------------------------
# Metrics


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; rows are true classes, columns predicted classes."""
    flat = labels.astype(np.int64) * num_classes + preds.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support,
            "predicted": predicted}  # fmt: skip


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over classes that occur in the labels or the predictions."""
    s = per_class_scores(cm)
    present = (s["support"] + s["predicted"]) > 0
    return float(s["f1"][present].mean()) if present.any() else 0.0


def accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else 0.0


def calibration_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Per confidence bin ((k/n, (k+1)/n], the first one closed at 0): count, mean confidence, accuracy."""
    conf = probs.max(axis=1).astype(np.float64)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    correct_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    nz = count > 0
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count,
        "confidence": np.divide(conf_sum, count, out=np.zeros(n_bins), where=nz),
        "accuracy": np.divide(correct_sum, count, out=np.zeros(n_bins), where=nz),
    }


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Sum over bins of |accuracy - confidence| weighted by the bin's share of frames."""
    b = calibration_bins(probs, labels, n_bins)
    return float(np.sum(np.abs(b["accuracy"] - b["confidence"]) * b["count"]) / len(labels))


def score(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    classes: list[str],
    slices: dict[str, list[str]] | None = None,
    min_slice_frames: int = 20,
) -> dict:
    """Accuracy, macro-F1, per class, per slice, ECE and confusion matrix of predictions `probs`.

    `slices` maps a metadata column (`trigger`, `camera`, `condition`, ...) to one value per
    frame; every value becomes a slice `"<column>=<value>"`. Slices with fewer than
    `min_slice_frames` frames are reported with `small: true` (the gate ignores them).
    """
    labels = _check_scores_input(probs, labels, classes)
    preds = probs.argmax(axis=1)
    cm = confusion_matrix(preds, labels, len(classes))
    pc = per_class_scores(cm)
    return {
        "n": int(len(labels)),
        "accuracy": accuracy(cm),
        "macro_f1": macro_f1(cm),
        "ece": expected_calibration_error(probs, labels),
        "per_class": {
            c: {
                "precision": float(pc["precision"][i]),
                "recall": float(pc["recall"][i]),
                "f1": float(pc["f1"][i]),
                "support": int(pc["support"][i]),
            }
            for i, c in enumerate(classes)
        },  # fmt: skip
        "per_slice": slice_scores(preds, labels, slices or {}, len(classes), min_slice_frames),
        "confusion": cm.tolist(),
        "classes": list(classes),
    }


def slice_scores(
    preds: np.ndarray,
    labels: np.ndarray,
    slices: dict[str, list[str]],
    num_classes: int,
    min_slice_frames: int,
) -> dict[str, dict]:
    """`{"<column>=<value>": {accuracy, macro_f1, n, small}}` for every value of every column."""
    out = {}
    for column, values in slices.items():
        if len(values) != len(labels):
            raise ValueError(
                f"slice column {column!r} has {len(values)} values for {len(labels)} frames"
            )
        values = np.asarray([str(v) for v in values])
        for value in np.unique(values).tolist():
            mask = values == value
            cm = confusion_matrix(preds[mask], labels[mask], num_classes)
            n = int(mask.sum())
            out[f"{column}={value}"] = {"accuracy": accuracy(cm), "macro_f1": macro_f1(cm), "n": n,
                                        "small": n < min_slice_frames}  # fmt: skip
    return out


def _check_scores_input(probs: np.ndarray, labels, classes: list[str]) -> np.ndarray:
    if not isinstance(probs, np.ndarray) or probs.ndim != 2:
        raise ValueError(f"probs must be a (N, C) array, got shape {getattr(probs, 'shape', None)}")
    if probs.shape[1] != len(classes):
        raise ValueError(f"probs has {probs.shape[1]} columns but there are {len(classes)} classes")
    labels = np.asarray(labels)
    if labels.shape != (len(probs),):
        raise ValueError(f"labels must have shape ({len(probs)},), got {labels.shape}")
    if len(labels) == 0:
        raise ValueError("no frames to score: probs and labels are empty")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(
            f"labels must lie in [0, {len(classes)}), got [{labels.min()}, {labels.max()}]"
        )
    return labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Robustness


def corruption(name: str, seed: int):
    """The albumentations transform (p=1, seeded) for a corruption name."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    # Severities are fixed here so that scores are comparable across iterations.
    factories = {
        "gauss_noise": lambda: A.GaussNoise(std_range=(0.1, 0.2), p=1.0),
        "motion_blur": lambda: A.MotionBlur(blur_limit=(5, 9), p=1.0),
        "fog": lambda: A.RandomFog(fog_coef_range=(0.3, 0.6), alpha_coef=0.08, p=1.0),
        "rain": lambda: A.RandomRain(rain_type="default", p=1.0),
    }
    if name not in factories:
        raise ValueError(f"unknown corruption {name!r}; known: {sorted(factories)}")
    return A.Compose([factories[name]()], seed=seed)


def corrupt(images: np.ndarray, name: str, *, seed: int) -> np.ndarray:
    """A corrupted copy of uint8 images (N, 3, S, S); albumentations works on HWC copies."""
    transform = corruption(name, seed)
    out = np.empty_like(images)
    for i, img in enumerate(images):
        hwc = np.ascontiguousarray(img.transpose(1, 2, 0))  # (S, S, 3)
        out[i] = transform(image=hwc)["image"].transpose(2, 0, 1)
    return out


def robustness(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    corruptions: tuple[str, ...] = CORRUPTIONS,
    seed: int = 0,
    max_frames: int | None = None,
    clean_probs: np.ndarray | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    progress: bool | None = None,
) -> dict[str, dict]:
    """Accuracy and macro-F1 under each corruption, beside the clean scores on the same frames.

    Each corruption runs on a seeded subsample of at most `max_frames` frames (None: all),
    and slow ones (fog) on at most `SLOW_CORRUPTIONS[name]`; `n` and `subsampled` in each
    entry say which. On CPU every corruption costs one forward pass over its frames.
    `progress`: bars of the corruptions and their passes (None: as `flywheel.progress` says).
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    check_input(images)
    labels = np.asarray(labels, dtype=np.int64)

    def probs_of(x: np.ndarray) -> np.ndarray:
        return predict(model, x, batch_size=batch_size, device=device, progress=progress).probs

    if clean_probs is None:
        clean_probs = probs_of(images)
    num_classes = clean_probs.shape[1]
    out = {}
    with bars.bar(total=len(corruptions), desc="robustness", unit="corruption",
                  progress=progress) as bar:  # fmt: skip
        for k, name in enumerate(corruptions):
            bar.set_postfix_str(name, refresh=False)
            caps = [c for c in (max_frames, SLOW_CORRUPTIONS.get(name)) if c is not None]
            idx = _subsample(len(images), min(caps, default=None), seed + k)
            noisy = corrupt(images[idx], name, seed=seed + k)
            cm = confusion_matrix(probs_of(noisy).argmax(axis=1), labels[idx], num_classes)
            clean = confusion_matrix(clean_probs[idx].argmax(axis=1), labels[idx], num_classes)
            out[name] = {
                "accuracy": accuracy(cm),
                "macro_f1": macro_f1(cm),
                "clean_accuracy": accuracy(clean),
                "clean_macro_f1": macro_f1(clean),
                "n": int(len(idx)),
                "subsampled": bool(len(idx) < len(images)),
            }
            bar.update()
    return out


def _subsample(n: int, cap: int | None, seed: int) -> np.ndarray:
    if cap is None or n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


# ---------------------------------------------------------------------------------------------
# One evaluation


def evaluate_model(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    meta: dict[str, list[str]],
    *,
    classes: list[str],
    golden_mask: np.ndarray | None = None,
    min_slice_frames: int = 20,
    robustness_seed: int = 0,
    robustness_max_frames: int | None = None,
    corruptions: tuple[str, ...] = CORRUPTIONS,
    probs: np.ndarray | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    progress: bool | None = None,
) -> dict:
    """The full report on the evaluation frames (test split + golden set).

    Top level: the overall score (see `score`); `golden` and `test`: the same on each part
    (None when the part is empty); `robustness`: see `robustness`. With a golden mask the
    slice column `set` (`golden` / `test`) is added, so the gate also guards the golden set.
    Pass `probs` if they were already computed (e.g. for a reliability plot). `progress`: bars of
    the forward passes on stderr (None: when the command line shows bars, `flywheel.progress`).
    """
    if probs is None:
        probs = predict(model, images, batch_size=batch_size, device=device,
                        progress=progress).probs  # fmt: skip
    if len(probs) != len(images):
        raise ValueError(f"probs has {len(probs)} rows for {len(images)} images")
    labels = np.asarray(labels)
    slices = {k: [str(v) for v in vals] for k, vals in meta.items()}
    golden = _check_golden_mask(golden_mask, len(images))
    if golden is not None:
        slices["set"] = np.where(golden, "golden", "test").tolist()

    def part(mask):
        if not mask.any():
            return None
        sub = {
            k: np.asarray(v, dtype=object)[mask].tolist() for k, v in slices.items() if k != "set"
        }
        return score(probs[mask], labels[mask], classes=classes, slices=sub,
                     min_slice_frames=min_slice_frames)  # fmt: skip

    report = score(probs, labels, classes=classes, slices=slices, min_slice_frames=min_slice_frames)
    report["golden"] = part(golden) if golden is not None else None
    report["test"] = part(~golden) if golden is not None else None
    report["robustness"] = robustness(
        model, images, labels, corruptions=corruptions, seed=robustness_seed,
        max_frames=robustness_max_frames, clean_probs=probs, batch_size=batch_size, device=device,
        progress=progress,
    )  # fmt: skip
    report["min_slice_frames"] = min_slice_frames
    return report


def _check_golden_mask(mask, n: int) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n,):
        raise ValueError(
            f"golden_mask must be a bool array of shape ({n},), got {mask.dtype} {mask.shape}"
        )
    return mask


# ---------------------------------------------------------------------------------------------
# Reporting


def flat_metrics(report: dict) -> dict[str, float]:
    """Scalar metrics of a report under MLflow-safe names (`slice/condition/fog/macro_f1`, ...)."""
    out: dict[str, float] = {}
    for part in ("", "golden/", "test/"):
        r = report if not part else report.get(part[:-1])
        if not r:
            continue
        for m in ("accuracy", "macro_f1", "ece"):
            out[f"{part}{m}"] = float(r[m])
        if part:
            continue
        for name, s in r["per_class"].items():
            out[f"class/{_safe(name)}/f1"] = s["f1"]
        for key, s in r["per_slice"].items():
            column, _, value = key.partition("=")
            for m in ("accuracy", "macro_f1"):
                out[f"slice/{_safe(column)}/{_safe(value)}/{m}"] = s[m]
    for name, s in (report.get("robustness") or {}).items():
        for m in ("accuracy", "macro_f1"):
            out[f"robustness/{_safe(name)}/{m}"] = s[m]
    return out


def _safe(name: str) -> str:
    # MLflow metric names allow letters, digits, '_', '-', '.', ' ', ':' and '/'.
    return re.sub(r"[^A-Za-z0-9_.\- :]", "_", str(name)) or "_"


def compare(challenger: dict, champion: dict | None) -> list[dict]:
    """Rows `{metric, challenger, champion, delta}` over both reports' scalar metrics.

    A metric missing on one side has None there and no delta; with no champion every
    champion cell is None.
    """
    ch = flat_metrics(challenger)
    cp = flat_metrics(champion) if champion is not None else {}
    rows = []
    for name in list(ch) + [k for k in cp if k not in ch]:
        a, b = ch.get(name), cp.get(name)
        delta = a - b if a is not None and b is not None else None
        rows.append({"metric": name, "challenger": a, "champion": b, "delta": delta})
    return rows


def compare_markdown(rows: list[dict]) -> str:
    """A Markdown table of `compare` rows (for Dagster `MetadataValue.md`)."""

    def cell(v, signed=False):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:+.4f}" if signed else f"{v:.4f}"

    lines = ["| metric | challenger | champion | delta |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['metric']} | {cell(r['challenger'])} | {cell(r['champion'])} "
                     f"| {cell(r['delta'], signed=True)} |")  # fmt: skip
    return "\n".join(lines)
