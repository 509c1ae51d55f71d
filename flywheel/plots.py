"""Small PNG plots for MLflow artifacts and the Dagster UI: confusion, curves, calibration.

Figures are built with `matplotlib.figure.Figure` and the Agg canvas, not pyplot: no global
state, safe in threads and in a headless daemon. Every function returns PNG bytes.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flywheel.evaluation.evaluate import ECE_BINS, calibration_bins, expected_calibration_error

DPI = 100


def confusion_png(cm, classes: list[str]) -> bytes:
    """Confusion matrix (rows true, columns predicted): colour = share of the row, text = count."""
    cm = np.asarray(cm, dtype=np.int64)
    c = len(classes)
    if cm.shape != (c, c):
        raise ValueError(f"cm has shape {cm.shape}, expected ({c}, {c}) for {c} classes")
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    side = 1.6 + 0.55 * c
    fig = Figure(figsize=(side + 0.8, side))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(c):
        for j in range(c):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(c), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(c), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    return _png(fig)


def learning_curves_png(history: list[dict]) -> bytes:
    """Per-epoch curves: keys containing "loss" on the left panel, other numbers on the right.

    `history` is one dict per epoch, e.g. `{"epoch": 1, "train_loss": .., "val_accuracy": ..}`.
    """
    if not history:
        raise ValueError("history is empty: no epochs to plot")
    x = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    keys = _numeric_keys(history, exclude={"epoch", "step"})
    losses = [k for k in keys if "loss" in k]
    others = [k for k in keys if "loss" not in k]
    fig = Figure(figsize=(8, 3.2))
    for pos, (group, title) in enumerate(((losses, "loss"), (others, "metrics")), start=1):
        ax = fig.add_subplot(1, 2, pos)
        for k in group:
            ax.plot(x, _column(history, k), marker="o", markersize=3, label=k)
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=7)
    return _png(fig)


def demo_png(rows: list[dict]) -> bytes:
    return _png(demo_figure(rows))


def demo_figure(rows: list[dict]) -> Figure:
    """The demo's iterations (`report.iteration_summary` rows with `iteration`): on top the metric of
    challenger, champion and the deployed model on the growing evaluation set, the deployed model on the
    fixed held-out set (the same frames every turn: where it rises, the model got better), and the
    challenger on the rare slice (each point labelled with its frames; hollow where too few to judge);
    below, challenger - champion on the rare slice with the gate's paired interval, against the gate's
    tolerance."""
    if not rows:
        raise ValueError("rows is empty: no iterations to plot")
    metric, rare = rows[0]["metric"], rows[0]["rare_slice"]
    x = [int(r["iteration"]) for r in rows]
    fig = Figure(figsize=(6.4, 6.0))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    deployed = [r["challenger"] if r["gate_passed"] else r["champion"] for r in rows]
    growing = "growing evaluation set"
    top.plot(x, _column(rows, "challenger"), "o-", markersize=4, label=f"challenger {metric}, {growing}")
    top.plot(x, _column(rows, "champion"), "s--", markersize=4, label=f"champion {metric}, {growing}")
    top.step(x, [math.nan if v is None else v for v in deployed], where="mid", color="black", alpha=0.5,
             linewidth=2, label=f"deployed {metric}, {growing}")  # fmt: skip
    # the deployed model after each turn on the same frames every turn; a gap where no fixed set existed yet
    fixed_n = next((r["fixed_frames"] for r in rows if r.get("fixed_frames")), None)
    fixed = [math.nan if r.get("fixed_deployed") is None else r["fixed_deployed"] for r in rows]
    top.plot(x, fixed, "D-", color="tab:green", linewidth=2, markersize=5,
             label=f"deployed {metric}, " + (f"fixed held-out set, n={fixed_n}" if fixed_n else "no fixed held-out set yet"))  # fmt: skip
    small = [r["rare_frames"] < r["min_slice_frames"] for r in rows]
    for hollow in (False, True):  # filled: enough frames to judge; hollow: too few
        xs = [i for i, r, s in zip(x, rows, small, strict=True) if s == hollow and r["challenger_rare"] is not None]
        ys = [r["challenger_rare"] for r, s in zip(rows, small, strict=True) if s == hollow and r["challenger_rare"] is not None]
        top.plot(xs, ys, "^", markersize=6, color="tab:purple",
                 markerfacecolor="none" if hollow else "tab:purple",
                 label=f"challenger on {rare}" + (f" (< {rows[0]['min_slice_frames']} frames: too few to judge)" if hollow else ""))  # fmt: skip
    for i, r in zip(x, rows, strict=True):
        if r["challenger_rare"] is not None:
            top.annotate(f"n={r['rare_frames']}", (i, r["challenger_rare"]), textcoords="offset points",
                         xytext=(4, -10), fontsize=6, color="tab:purple")  # fmt: skip
    top.set_ylim(0, 1.05)
    top.set_ylabel(metric)
    top.grid(alpha=0.3)
    top.legend(fontsize=6, loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=2, frameon=False)  # above: no point hidden
    judged = [(i, r) for i, r in zip(x, rows, strict=True) if r["rare_delta"]]
    for i, r in judged:
        d, lo, hi = r["rare_delta"]
        bottom.errorbar([i], [d], yerr=[[d - lo], [hi - d]], fmt="o", capsize=3, color="tab:purple",
                        markerfacecolor="tab:purple" if r["rare_gated"] else "none")  # fmt: skip
    bottom.axhline(0, color="gray", linewidth=0.8)
    bottom.axhline(-rows[0]["slice_tolerance"], color="tab:red", linestyle=":", linewidth=1,
                   label="-tolerance: a slice regresses when its whole interval lies below")  # fmt: skip
    bottom.set_ylabel(f"{rare}\nchallenger - champion", fontsize=8)
    bottom.set_title("the gate's paired interval (hollow: not gated, too few frames)", fontsize=8)
    bottom.legend(fontsize=6, loc="lower right")
    bottom.grid(alpha=0.3)
    bottom.set_xlabel("iteration")
    bottom.set_xticks(x)  # whole iterations only
    return fig


def diff_png(diff: dict) -> bytes:
    """Rows a dataset version adds to another (`flywheel.data.diff.diff_versions`), per class and per
    condition, as horizontal bars (negative: rows it no longer has)."""
    fig = Figure(figsize=(6.4, 3.2))
    panels = fig.subplots(1, 2)
    for ax, dim in zip(panels, ("class", "condition"), strict=True):
        values = diff["counts"][dim]
        names = list(values)
        ax.barh(names, [values[k]["delta"] for k in names], color="tab:blue")
        ax.set_title(f"rows added per {dim}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"{diff['dataset']} v{diff['before']} → v{diff['after']}", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def label_efficiency_png(curves: dict, *, rare: str, chance: float, ratios: dict | None = None) -> bytes:
    """Accuracy against human labels spent, per arm: `curves[arm][key]` = {labels, mean, min, max[, half]}
    over seeds for key `<rare>_accuracy` (left) and `accuracy` (right); the band is the mean's 95 %
    interval (mean ± half) where `half` is given, else the seeds' min to max.
    `ratios[arm]` (`target`, `engine_labels`, `ratio`) marks where an arm reaches the first arm's final
    rare-slice accuracy."""
    fig = Figure(figsize=(9, 3.6))
    panels = fig.subplots(1, 2, sharey=True)
    for ax, key, title in zip(panels, (f"{rare}_accuracy", "accuracy"), (f"{rare} (rare slice)", "all conditions"), strict=True):
        for arm, c in curves.items():
            line = ax.plot(c[key]["labels"], c[key]["mean"], "o-", markersize=4, label=arm)[0]
            lo, hi = ((np.subtract(c[key]["mean"], c[key]["half"]), np.add(c[key]["mean"], c[key]["half"]))
                      if "half" in c[key] else (c[key]["min"], c[key]["max"]))  # fmt: skip
            ax.fill_between(c[key]["labels"], lo, hi, color=line.get_color(), alpha=0.15)
        ax.axhline(chance, color="gray", linestyle="--", linewidth=0.8, label="chance")
        ax.set_title(f"accuracy, {title}", fontsize=10)
        ax.set_xlabel("human labels spent")
        ax.grid(alpha=0.3)
    target = next(iter((ratios or {}).values()), None)
    if target is not None:
        panels[0].axhline(target["target"], color="black", linestyle=":", linewidth=1,
                          label=f"{next(iter(curves))} arm's final {rare} accuracy")  # fmt: skip
        reached = [(arm, r) for arm, r in (ratios or {}).items() if r["engine_labels"] is not None]
        for k, (arm, r) in enumerate(reached):  # one line of text each, stacked above the target line
            panels[0].annotate(f"{arm}: {r['ratio']:.2f} of the labels", (r["engine_labels"], r["target"]),
                               textcoords="offset points", xytext=(4, 6 + 10 * k), fontsize=7)  # fmt: skip
    band = "95 % interval" if all("half" in c[f"{rare}_accuracy"] for c in curves.values()) else "min to max"
    panels[0].set_ylabel(f"accuracy (mean over seeds; band: {band})")
    panels[0].set_ylim(0, 1.02)
    panels[0].legend(fontsize=7, loc="lower right")
    return _png(fig)


def optimization_history_png(trials: list[dict], metric: str) -> bytes:
    """A hyperparameter search by trial number: each finished trial's `metric` (dots), the best so
    far (line), and pruned trials as crosses on the x axis.

    `trials` is one dict per trial: `{"number": 3, "state": "COMPLETE", "value": 0.71}` (or state
    "PRUNED", ...).
    """
    if not trials:
        raise ValueError("trials is empty: no trials to plot")
    done = [t for t in trials if t["state"] == "COMPLETE"]
    pruned = [t["number"] for t in trials if t["state"] == "PRUNED"]
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    x = [t["number"] for t in done]
    ax.plot(x, [t["value"] for t in done], "o", markersize=4, label=f"{metric} of a trial")
    best = np.maximum.accumulate([t["value"] for t in done])  # (finished,)
    ax.step(x, best, where="post", color="tab:red", label="best so far")
    if pruned:
        ax.plot(pruned, [0] * len(pruned), "x", color="gray", label="pruned")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{metric} (val)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{len(done)} finished, {len(pruned)} pruned", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def reliability_png(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> bytes:
    """Reliability diagram: accuracy per confidence bin against the diagonal, ECE in the title."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if probs.ndim != 2 or labels.shape != (len(probs),) or len(probs) == 0:
        raise ValueError(
            f"probs (N, C) and labels (N,) with N > 0 expected, got {probs.shape} and {labels.shape}"
        )
    b = calibration_bins(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    width = 1.0 / n_bins
    centers = b["edges"][:-1] + width / 2
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    nz = b["count"] > 0
    ax.bar(centers[nz], b["accuracy"][nz], width=width * 0.9, color="tab:blue", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.plot(b["confidence"][nz], b["accuracy"][nz], "o", color="tab:red", markersize=3,
            label="mean confidence")  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"ECE {ece:.4f} (N={len(labels)}, {n_bins} bins)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def per_class_map_png(challenger: dict, champion: dict | None = None) -> bytes:
    """Per-class AP@.5 (detection reports, `coco_map`) of the challenger, beside the champion's when given;
    classes without a true box are left out."""
    names = [c for c, v in challenger["per_class"].items() if v["map50"] is not None]
    fig = Figure(figsize=(max(4.0, 0.9 * len(names) + 1.5), 3.2))
    ax = fig.add_subplot(1, 1, 1)
    x, width = np.arange(len(names)), 0.4 if champion else 0.7
    ax.bar(x - (width / 2 if champion else 0), [challenger["per_class"][c]["map50"] for c in names], width,
           label=f"challenger (mAP@.5 {challenger['map50']:.3f})")  # fmt: skip
    if champion:
        ax.bar(x + width / 2, [champion["per_class"].get(c, {}).get("map50") or 0 for c in names], width,
               label=f"champion (mAP@.5 {champion['map50']:.3f})")  # fmt: skip
    ax.set_xticks(x, names, rotation=20, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AP@.5")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def boxes_png(images: np.ndarray, truth: list, detections: list, classes: list[str], *, min_score: float = 0.3) -> bytes:
    """Model-input frames (N, 3, S, S) with their true boxes (green) and the detections at or above
    `min_score` (orange, with class and score): a grid of at most 8."""
    from matplotlib.patches import Rectangle

    n = min(len(images), 8)
    if not n:
        raise ValueError("no frames to draw")
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(2.6 * cols, 2.6 * rows))
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(images[i].transpose(1, 2, 0))
        for _, x, y, w, h in truth[i]:
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="lime", linewidth=1))
        for c, score, x, y, w, h in (d for d in detections[i] if d[1] >= min_score):
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="orange", linewidth=1, linestyle="--"))
            ax.text(x, y, f"{classes[c]} {score:.2f}", color="orange", fontsize=5, va="bottom")
        ax.set_axis_off()
    fig.suptitle("true boxes (green), detections (orange)", fontsize=8)
    return _png(fig)


def markdown_image(png: bytes, alt: str = "plot") -> str:
    """Inline Markdown image (base64 data URI), for Dagster `MetadataValue.md`."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def _numeric_keys(rows: list[dict], exclude: set[str]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in exclude and k not in keys and _is_number(v):
                keys.append(k)
    return keys


def _column(rows: list[dict], key: str) -> list[float]:
    # A missing or non-numeric value is a gap (NaN) in the line, not a zero.
    return [float(r[key]) if _is_number(r.get(key)) else math.nan for r in rows]


def _is_number(v) -> bool:
    return isinstance(v, int | float | np.number) and not isinstance(v, bool)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
