"""Benchmark: the flywheel's training recipe against a plain CNN, same frames, same held-out clips.

For each dataset (benchmarks/datasets.py) and each size, in increasing order (the smaller pool is
a prefix of the larger, so the sizes are the flywheel's growing dataset):

  recipe       what the pipeline does with a fleet batch, through its own stage functions: frames
               Parquet -> `stages.label_batch` (labels, split by clip) -> `stages.augment_batch`
               (offline oversampling, settings.augment) -> `dataset.append_version` (v1 = the first
               size, v2 = v1 + the frames the next size adds, ...) -> `fit.fit_version` (the select
               run on train, then, with `train.refit`, the refit on train + val: its weights are the
               challenger), trained from scratch on the version; seconds are both phases
  recipe_select the select run alone (with `train.refit`): trained on train, the best val epoch
  recipe_warm  the same, warm-started from the previous size's recipe_warm model (the first
               size's fresh model starts the chain), as `stages.train_challenger` warm-starts from
               the champion with `train.warm_start: true`
  cnn          the yardsticks of `flywheel.training.baseline`, trained the standard way on the version's
  resnet18     train originals (the same frames the recipe trains on, without its offline copies):
               the classic script CNN (flatten, fully connected) and ResNet-18 as published

Every arm is scored with `flywheel.predict.predict` on the same held-out frames (clips drawn
apart from the training stream), decoded once through the one model-input path. Settings are the
defaults (or `config`) with the dataset's `classes` and `image_size`, then `overrides`
(dotted keys, as `flywheel.config.load_settings` takes them), so recipe variants are compared
without code changes: `flywheel bench recipe --set train.epochs=12 --set augment.max_copies=0`.

Time to accuracy: every arm is scored on the held-out frames after each epoch (at most ~12 times
a run; the scoring's own time is not counted), and `seconds_to_cnn` is the training time at which
it first reached the script CNN's final held-out accuracy on that row (None: never). For the
recipe the scored epochs are the challenger's (the refit's), on a clock started with the select run.

Each seed draws other frames (training pool and held-out stream) and trains every arm with that
seed; the summary gives, per dataset, size and arm, the mean over seeds with a 95 % t-interval. A
yardstick *learns* on a row when its held-out accuracy is at least `baseline.LEARNED` above the
majority class's share; a row where one does not is reported broken, not won.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn as nn

from benchmarks.datasets import DATASETS, Frames, make_frames
from flywheel import layout, stages
from flywheel.config import Settings, load_settings
from flywheel.data import dataset
from flywheel.data.schema import FRAMES
from flywheel.evaluation.evaluate import accuracy, confusion_matrix, macro_f1, per_class_scores
from flywheel.model import load_weights
from flywheel.model_input import decode_images
from flywheel.predict import predict
from flywheel.store import Store, store_for
from flywheel.training import baseline
from flywheel.training.device import pick_device
from flywheel.training.fit import Fitted, fit_version
from flywheel.training.train import TrainConfig, TrainResult

SIZES = (1000, 3000)
QUICK_SIZES = (96, 192)
HELDOUT = 1000
QUICK_HELDOUT = 48
YARDSTICKS = ("cnn", "resnet18")
ARMS = ("recipe", "recipe_select", "recipe_warm", "recipe_refit", *YARDSTICKS)  # recipe_refit: older files
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}  # t(0.975, df)


# ----------------------------------------------------------------------------- the recipe


def recipe_settings(name: str, root: Path, *, config: str | None = None,
                    overrides: dict | None = None) -> Settings:  # fmt: skip
    """The settings the recipe arm runs with: defaults (or `config`), the dataset's classes and
    input size, a store at `root`, then `overrides` (dotted keys)."""
    spec = DATASETS[name]
    values = {"classes": spec.classes, "image_size": spec.image_size, "store.root": str(root)}
    return load_settings(config, **{**values, **(overrides or {})})


def frames_table(frames: Frames, batch_id: str) -> pa.Table:
    """Frames as the `frames` stage writes them (schema FRAMES), ground truth = the class name."""
    n, index, clip_of = len(frames), [], {}
    for c in frames.clips:  # frame number inside its clip
        clip_of[c] = clip_of.get(c, -1) + 1
        index.append(clip_of[c])
    fids = [f"{c}/front/{i}" for c, i in zip(frames.clips, index, strict=True)]
    columns = {
        "frame_id": fids, "clip_id": frames.clips, "vehicle_id": ["bench"] * n,
        "trigger": ["random"] * n, "recorded_at": ["2025-01-06T00:00:00+00:00"] * n,
        "condition": frames.conditions, "camera": ["front"] * n,
        "timestamp_ns": [i * 200_000_000 for i in index], "image": frames.images,
        "format": [frames.format] * n, "height": [frames.height] * n, "width": [frames.width] * n,
        "ground_truth": [frames.classes[k] for k in frames.labels], "batch_id": [batch_id] * n,
        "clip_key": [""] * n, "boxes": [None] * n,
    }  # fmt: skip
    return pa.table(columns, schema=FRAMES)


def add_batch(store: Store, settings: Settings, frames: Frames, batch_id: str) -> tuple[dict, dict]:
    """One fleet batch through the pipeline's stages after ingest: labels, augmented rows, and the
    next dataset version. Returns (manifest, augment_batch's report)."""
    store.write_parquet(layout.frames_key(batch_id), frames_table(frames, batch_id))
    stages.label_batch(store, settings, batch_id)
    augmented = stages.augment_batch(store, settings, batch_id)
    d = settings.dataset
    manifest = dataset.append_version(
        store, name=d.name, batches={batch_id: store.read_parquet(layout.augmented_key(batch_id))},
        classes=settings.classes, shard_mb=d.shard_mb, row_group_rows=d.row_group_rows,
    )  # fmt: skip
    return manifest, augmented


def train_recipe(store: Store, settings: Settings, manifest: dict, *, warm_start: bytes | None = None,
                 curve: Curve | None = None) -> tuple[Fitted, float | None]:  # fmt: skip
    """`stages.train_challenger`'s training, without MLflow or checkpoints; `curve`: the challenger's
    (the last phase's) epochs scored, its clock started before the first phase. Also returns the
    seconds the select run took when a refit followed it."""
    cfg = TrainConfig.from_settings(settings)
    val_rows = dataset.split_rows(manifest, "val")
    final = "refit" if cfg.refit and val_rows else "select"
    rows = dataset.split_rows(manifest, "train") + (val_rows if final == "refit" else 0)
    if curve is not None:
        curve.start(cfg.epochs_for(math.ceil(rows / cfg.batch_size)))
    started, select_seconds = time.perf_counter(), []

    def on_epoch_end(phase: str, epoch: int, epochs: int, metrics: dict) -> None:
        if phase == "select" and epoch + 1 == epochs:
            select_seconds.append(time.perf_counter() - started - (curve.scoring if curve else 0.0))

    fitted = fit_version(store, manifest, settings.classes, cfg, geometric=settings.geometric_aug,
                         warm_start=warm_start, on_epoch_end=on_epoch_end,
                         on_epoch_model=lambda phase, e, m: curve(e, m) if curve and phase == final else None)  # fmt: skip
    return fitted, (select_seconds[-1] if fitted.refit is not None and select_seconds else None)


class Curve:
    """Held-out accuracy against training seconds, after about `points` evenly spaced epochs and the
    last; the time spent scoring is left out of the seconds."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, points: int = 12):
        self.images, self.labels, self.points = images, labels, points
        self.every, self.epochs, self.t0, self.scoring = 1, 0, 0.0, 0.0
        self.values: list[tuple[float, float]] = []  # (seconds, accuracy)

    def start(self, epochs: int) -> Curve:
        self.epochs, self.every = epochs, max(1, math.ceil(epochs / self.points))
        self.t0, self.scoring, self.values = time.perf_counter(), 0.0, []
        return self

    def __call__(self, epoch: int, model: nn.Module) -> None:
        if (epoch + 1) % self.every and epoch + 1 != self.epochs:
            return
        t = time.perf_counter()
        preds = predict(model, self.images, device="cpu", progress=False).probs.argmax(axis=1)
        self.values.append((round(t - self.t0 - self.scoring, 1), round(float((preds == self.labels).mean()), 4)))
        self.scoring += time.perf_counter() - t



# ----------------------------------------------------------------------------- scores


def score(model: nn.Module, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro-F1 and recall per class of `model` on the held-out frames."""
    preds = predict(model, images, device="cpu").probs.argmax(axis=1)
    cm = confusion_matrix(preds, labels, len(classes))
    recall = per_class_scores(cm)["recall"]  # (C,)
    return {
        "frames": int(cm.sum()),
        "accuracy": round(accuracy(cm), 4),
        "macro_f1": round(macro_f1(cm), 4),
        "recall": {c: round(float(r), 4) for c, r in zip(classes, recall, strict=True)},
    }


def _recipe_arm(result: TrainResult, images, labels, classes, seconds: float | None, curve: Curve | None) -> dict:
    """A recipe model's scores; `curve` None: a model whose epochs were not scored (the select run's)."""
    model, _ = load_weights(result.weights)
    last = result.history[-1]
    timing = {"seconds": None if seconds is None else round(seconds - (curve.scoring if curve else 0.0), 1)}
    return {**score(model, images, labels, classes), **timing, **({"curve": curve.values} if curve else {}),
            "train_acc": round(last["train_acc"], 4),
            "val_acc": round(last.get("val_acc", float("nan")), 4),
            "warm_started": result.warm_started, "best_epoch": result.best_epoch,
            "epochs": len(result.history)}  # fmt: skip


# ----------------------------------------------------------------------------- the benchmark


def bench_dataset(name: str, workdir: Path, *, sizes: tuple[int, ...], heldout: int, seed: int = 0,
                  config: str | None = None, overrides: dict | None = None,
                  yardsticks: tuple[str, ...] = YARDSTICKS, yardstick_epochs: int = baseline.EPOCHS,
                  warm: bool = False, recipe: bool = True,
                  on_row: Callable[[dict], None] | None = None) -> list[dict]:  # fmt: skip
    """One row per size: recipe, recipe_select (with `train.refit`), recipe_warm (from the second size,
    with `warm`) and each yardstick on one dataset, all trained with `seed` on frames drawn with it; `recipe` False: the yardsticks
    only (a yardstick's rerun on the same seeded frames, to set beside an earlier recipe run)."""
    overrides = {"train.seed": seed, **(overrides or {})}
    settings = recipe_settings(name, workdir / f"{name}-{seed}", config=config, overrides=overrides)
    store, classes, size_px = store_for(settings), settings.classes, settings.image_size
    pool = make_frames(name, frames=max(sizes), seed=seed)
    held = make_frames(name, frames=heldout, seed=seed, heldout=True)
    if set(pool.clips) & set(held.clips):
        raise ValueError(f"{name}: held-out clips overlap the training clips")
    test_x = decode_images(held.images, size_px, heights=[held.height] * len(held),
                           widths=[held.width] * len(held))  # fmt: skip
    test_y = np.array(held.labels, np.int64)
    heldout_sha = hashlib.sha256(test_x.tobytes() + test_y.tobytes()).hexdigest()[:16]
    majority = float(np.bincount(test_y).max() / len(test_y))
    rows, done, warm_weights = [], 0, None
    for k, size in enumerate(sorted(sizes)):
        new = pool.take(size).skip(done)
        if len(new) == 0:
            continue
        manifest, _ = add_batch(store, settings, new, f"b{k + 1:04d}")
        done += len(new)
        row = {"dataset": name, "size": size, "seed": seed, "pool_frames": done}
        curve = Curve(test_x, test_y)
        if recipe:
            t0 = time.perf_counter()
            fresh, select_seconds = train_recipe(store, settings, manifest, curve=curve)
            row["recipe"] = _recipe_arm(fresh.final, test_x, test_y, classes, time.perf_counter() - t0, curve)
            if fresh.refit is not None:  # the select run's model, scored too: what the refit added
                row["recipe_select"] = _recipe_arm(fresh.select, test_x, test_y, classes, select_seconds, None)
        if recipe and warm and warm_weights is not None:
            t0 = time.perf_counter()
            warmed, _ = train_recipe(store, settings, manifest, warm_start=warm_weights, curve=curve)
            seconds = time.perf_counter() - t0
            row["recipe_warm"] = _recipe_arm(warmed.final, test_x, test_y, classes, seconds, curve)
            warm_weights = warmed.final.weights
        elif recipe:
            warm_weights = fresh.final.weights
        x, y = baseline.train_originals(store, manifest, size_px)
        for kind in yardsticks:
            curve.start(yardstick_epochs)
            t0 = time.perf_counter()
            model = baseline.train_yardstick(x, y, num_classes=len(classes), kind=kind,
                                             epochs=yardstick_epochs, seed=seed, on_epoch=curve)  # fmt: skip
            seconds = time.perf_counter() - t0 - curve.scoring
            scores = score(model, test_x, test_y, classes)
            row[kind] = {**scores, "seconds": round(seconds, 1), "epochs": yardstick_epochs,
                         "learns": scores["accuracy"] >= majority + baseline.LEARNED,
                         "curve": curve.values}  # fmt: skip
        for arm in ARMS if "cnn" in row else ():  # time to accuracy: to the CNN's final held-out accuracy
            if "curve" in row.get(arm, {}):
                reached = [t for t, acc in row[arm]["curve"] if acc >= row["cnn"]["accuracy"] - 1e-9]
                row[arm]["seconds_to_cnn"] = reached[0] if reached else None
        train_rows, copies = manifest["counts"]["split"]["train"], manifest["counts"]["augmented"]
        row.update({
            "frames": train_rows - copies.get("train", 0), "train_rows": train_rows,
            "offline_copies": copies.get("train", 0), "heldout_frames": len(test_y),
            "heldout_clips": len(set(held.clips)), "heldout_sha256": heldout_sha,
            "majority_share": round(majority, 4), "image_size": size_px,
            "delta": {kind: round(row["recipe"]["accuracy"] - row[kind]["accuracy"], 4)
                      for kind in yardsticks if recipe},
        })  # fmt: skip
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def _bench_task(args: tuple) -> list[dict]:
    """One (dataset, seed) in a worker process, with one torch thread."""
    name, seed, workdir, threads, kwargs = args
    torch.set_num_threads(threads)
    return bench_dataset(name, Path(workdir), seed=seed, **kwargs)


def bench_recipe(workdir: str | Path | None = None, *, datasets: tuple[str, ...] = tuple(DATASETS),
                 sizes: tuple[int, ...] = SIZES, heldout: int = HELDOUT, seeds: tuple[int, ...] = (0, 1, 2),
                 config: str | None = None, overrides: dict | None = None, quick: bool = False,
                 warm: bool = False, yardsticks: tuple[str, ...] = YARDSTICKS,
                 yardstick_epochs: int = baseline.EPOCHS, threads: int | None = None, jobs: int = 1,
                 recipe: bool = True,
                 on_row: Callable[[dict], None] | None = None) -> dict:  # fmt: skip
    """The recipe vs the yardsticks on each dataset, size and seed, with a summary over seeds;
    `quick`: tiny sizes, 1 epoch, for a smoke run.

    `jobs` > 1 runs (dataset, seed) pairs in that many processes of `threads` (default 1) torch
    threads each. `threads`, in one process: torch's intra-op threads while it runs (None: torch's
    default, one per core); on a shared machine one thread trains several times faster than two
    contended ones."""
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; known: {list(DATASETS)}")
    bad = [k for k in yardsticks if k not in baseline.YARDSTICKS]
    if bad:
        raise ValueError(f"unknown yardstick(s) {bad}; known: {list(baseline.YARDSTICKS)}")
    if not seeds:
        raise ValueError("at least one seed is needed")
    overrides = dict(overrides or {})
    if quick:
        sizes, heldout = QUICK_SIZES, min(heldout, QUICK_HELDOUT)
        yardstick_epochs = min(yardstick_epochs, 1)
        overrides.setdefault("train.epochs", 1)
        # OneCycleLR needs warmup_pct x steps > 1: batches of 16 give a tiny pool enough steps
        overrides.setdefault("train.batch_size", 16)
    kwargs = {"sizes": tuple(sizes), "heldout": heldout, "config": config, "overrides": overrides,
              "yardsticks": tuple(yardsticks), "yardstick_epochs": yardstick_epochs, "warm": warm,
              "recipe": recipe}  # fmt: skip
    tasks = [(name, seed) for name in datasets for seed in seeds]
    t0, rows, before = time.perf_counter(), [], torch.get_num_threads()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        if jobs > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            args = [(name, seed, tmp, threads or 1, kwargs) for name, seed in tasks]
            with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
                futures = [pool.submit(_bench_task, a) for a in args]
                for future in as_completed(futures):  # each task's rows as soon as it ends
                    for row in future.result() if on_row is not None else ():
                        on_row(row)
                rows = [row for future in futures for row in future.result()]  # in task order
        else:
            try:
                torch.set_num_threads(threads or before)
                for name, seed in tasks:
                    rows += bench_dataset(name, Path(tmp), seed=seed, on_row=on_row, **kwargs)
            finally:
                torch.set_num_threads(before)
    info = {**machine(), "torch_threads": threads or before, "jobs": jobs}
    probe = recipe_settings(datasets[0], Path("."), config=config, overrides=overrides)
    summary = summarize(rows)
    return {
        "config": {
            "sizes": list(sizes), "heldout": heldout, "seeds": list(seeds), "overrides": overrides,
            "train": probe.train.model_dump(), "augment": probe.augment.model_dump(),
            "dataset_split": probe.dataset.split, "yardsticks": list(yardsticks),
            "yardstick_epochs": yardstick_epochs, "learned_margin": baseline.LEARNED,
            "machine": info,
        },
        "rows": rows,
        "summary": summary,
        "seconds": round(time.perf_counter() - t0, 1),
        "markdown": markdown(summary),
    }  # fmt: skip


def _notes(result: dict) -> str:
    """What a result's Markdown says below its table (an earlier merge's notes), to carry into a new merge."""
    if "summary" not in result:
        return ""
    table, text = markdown(result["summary"]), result.get("markdown", "")
    return text[len(table):] if text.startswith(table) else ""


def add_rows(base: dict, extra: list[dict]) -> dict:
    """`base` (a bench recipe result, merged or not) with the rows of other runs added: more seeds of the
    same rows, every arm as that run trained it. A (dataset, size, seed) already there is refused (another
    run of the same seed is a rerun: `merge_rerun`); the summary and table are recomputed."""
    rows = [dict(r) for r in base["rows"]]
    seen = {(r["dataset"], r["size"], r["seed"]) for r in rows}
    added = []
    for other in extra:
        for new in other["rows"]:
            key = (new["dataset"], new["size"], new["seed"])
            if key in seen:
                raise ValueError(f"{key}: already a row of the base result (a rerun replaces an arm: --arm)")
            seen.add(key)
            rows.append(dict(new))
            added.append(key)
    summary = summarize(rows)
    notes = _notes(base)
    note = ("\n\nThese seeds come from another run than the rows beside them, with all their arms: "
            + ", ".join(f"{d} {n:,} seed {s}" for d, n, s in added) + ".")  # fmt: skip
    return {**base, "rows": rows, "summary": summary, "markdown": markdown(summary) + notes + note,
            "added": {"rows": [list(k) for k in added]}}


def merge_rerun(base: dict, reruns: list[dict], arm: str) -> dict:
    """`base` (a bench recipe result) with `arm` of each row replaced by the same arm of a rerun on the
    same seeded frames (`bench recipe --no-recipe`): matched by (dataset, size, seed), refused when the
    held-out sets' hashes differ (other frames), the summary and table recomputed. A rerun row
    without an arm result or without a hash (rows kept from an interrupted run's progress lines:
    `{dataset, seed, <arm>_heldout_accuracy}`) replaces accuracy alone and is marked so. With `arm`
    "recipe" (a recipe-only rerun with other code or settings) the yardsticks stay and every delta is redone."""
    rows = [dict(r) for r in base["rows"]]
    by_key = {(r["dataset"], r["size"], r["seed"]): r for r in rows}
    replaced = []
    for rerun in reruns:
        for new in rerun["rows"]:
            key = (new["dataset"], new.get("size", next(iter(base["config"]["sizes"]))), new["seed"])
            old = by_key.get(key)
            if old is None:
                raise ValueError(f"{key}: no such row in the base result")
            if arm in new:
                if new.get("heldout_sha256") != old["heldout_sha256"]:
                    raise ValueError(f"{key}: the rerun scored other held-out frames than the base")
                old[arm] = {**new[arm], "rerun": True}
            else:
                acc = new[f"{arm}_heldout_accuracy"]
                old[arm] = {"accuracy": acc, "macro_f1": None, "seconds": None, "rerun": True,
                            "learns": acc >= old["majority_share"] + baseline.LEARNED, "from_progress_line": True}  # fmt: skip
            if "recipe" in old:  # the recipe less each yardstick: all of them when the recipe arm is the one replaced
                others = [a for a in YARDSTICKS if a in old] if arm == "recipe" else [arm]
                old["delta"] = {**old.get("delta", {}), **{a: round(old["recipe"]["accuracy"] - old[a]["accuracy"], 4) for a in others}}
            replaced.append(key)
    summary = summarize(rows)
    note = (f"\n\n`{arm}` on these rows comes from another run than the other arms: its seconds compare with theirs "
            "only as far as the two runs' loads matched.")  # fmt: skip
    return {**base, "rows": rows, "summary": summary, "markdown": markdown(summary) + _notes(base) + note,
            "merged": {"arm": arm, "rows_replaced": [list(k) for k in replaced]}}


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T95.get(n - 1, 1.96) * sd / math.sqrt(n)


def summarize(rows: list[dict]) -> list[dict]:
    """Per dataset and size, over seeds: each arm's accuracy and seconds (mean, 95 % half-width),
    whether every yardstick learned on every seed, and the verdict: `broken` (a yardstick did not
    learn), `recipe ahead` (its mean at or above every yardstick's) or `recipe behind <arm>`."""
    out = []
    for key in dict.fromkeys((r["dataset"], r["size"]) for r in rows):
        group = [r for r in rows if (r["dataset"], r["size"]) == key]
        arms = [a for a in ARMS if any(a in r for r in group)]  # an arm some seeds lack: over those that have it
        entry = {"dataset": key[0], "size": key[1], "seeds": [r["seed"] for r in group],
                 "pool_frames": round(sum(r["pool_frames"] for r in group) / len(group)),
                 "frames": round(sum(r["frames"] for r in group) / len(group)),
                 "majority_share": round(sum(r["majority_share"] for r in group) / len(group), 4)}  # fmt: skip
        for arm in arms:
            entry[arm] = {}
            had = [r for r in group if arm in r]
            for field, digits in (("accuracy", 4), ("macro_f1", 4), ("seconds", 1)):
                values = [r[arm][field] for r in had if r[arm].get(field) is not None]  # None: not recorded
                mean, ci = interval(values) if values else (None, None)
                entry[arm][field] = None if mean is None else round(mean, digits)
                entry[arm][field + "_ci95"] = None if ci is None else round(ci, digits)
                if values and len(values) < len(group):
                    entry[arm][field + "_seeds"] = len(values)
            if arm in YARDSTICKS:
                entry[arm]["learns"] = all(r[arm]["learns"] for r in had)
            to_cnn = [r[arm].get("seconds_to_cnn") for r in had if "seconds_to_cnn" in r[arm]]
            if to_cnn:  # mean over the seeds where it got there, and on how many it did
                reached = [t for t in to_cnn if t is not None]
                entry[arm]["seconds_to_cnn"] = round(sum(reached) / len(reached), 1) if reached else None
                entry[arm]["reached_cnn"] = f"{len(reached)}/{len(to_cnn)}"
        sticks = [a for a in arms if a in YARDSTICKS]
        behind = [a for a in sticks if "recipe" in entry and entry["recipe"]["accuracy"] < entry[a]["accuracy"]]
        if any(not entry[a]["learns"] for a in sticks):
            entry["verdict"] = "broken: " + ", ".join(a for a in sticks if not entry[a]["learns"]) + " did not learn"
        elif "recipe" not in entry:
            entry["verdict"] = "yardsticks learned (no recipe arm)"
        elif not sticks:  # a recipe variant alone: compared with `recipe-compare`, not judged here
            entry["verdict"] = "no yardstick in this run"
        else:
            entry["verdict"] = f"recipe behind {', '.join(behind)}" if behind else "recipe ahead"
        out.append(entry)
    return out


def machine() -> dict:
    """Where the figures come from: cores, threads, versions, device, load at the end."""
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "processor": platform.machine(), "device": str(pick_device("auto")),
            "load_average": [round(x, 1) for x in os.getloadavg()]}  # fmt: skip


def markdown(summary: list[dict]) -> str:
    """The summary as a Markdown table: accuracy (mean ± 95 % half-width over seeds) and seconds per arm."""

    def cell(entry, arm, field="accuracy"):
        if arm not in entry:
            return "–"
        a = entry[arm]
        mark = "" if a.get("learns", True) else " (did not learn)"
        if field == "seconds":
            return "–" if a["seconds"] is None else f"{a['seconds']:.0f}"
        if field == "to_cnn":
            if "reached_cnn" not in a:
                return "–"
            t = a["seconds_to_cnn"]
            return ("never" if t is None else f"{t:.0f}") + f" ({a['reached_cnn']})"
        seeds = f" ({a[field + '_seeds']} seeds)" if field + "_seeds" in a else ""
        return f"{a[field]:.3f} ± {a[field + '_ci95']:.3f}{seeds}{mark}"

    arms = [a for a in ARMS if any(a in e for e in summary)]
    timed = any("reached_cnn" in e[a] for e in summary for a in arms if a in e)  # time to accuracy was measured
    head = ("| dataset | pool | train frames | seeds | majority | " + " | ".join(arms)
            + " | verdict | seconds: " + " / ".join(arms)
            + (" | seconds to the cnn's accuracy (seeds): " + " / ".join(arms) if timed else "") + " |")  # fmt: skip
    lines = [head, "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in arms) + " | --- | --- |"
             + (" --- |" if timed else "")]  # fmt: skip
    for e in summary:
        lines.append(f"| {e['dataset']} | {e['pool_frames']:,} | {e['frames']:,} | {len(e['seeds'])} "
                     f"| {e['majority_share']:.2f} | " + " | ".join(cell(e, a) for a in arms)
                     + f" | {e['verdict']} | " + " / ".join(cell(e, a, "seconds") for a in arms)
                     + (" | " + " / ".join(cell(e, a, "to_cnn") for a in arms) if timed else "") + " |")  # fmt: skip
    return "\n".join(lines)


def compare(variants: dict[str, dict], base: str, arms: tuple[str, ...] = ("recipe", "recipe_select", "recipe_refit"),
            *, last_epoch: bool = False) -> dict:
    """Recipe variants (`bench recipe` results run with other `--set` values, keyed by a label) against
    the `base` variant's `recipe` arm, row by row on the same seeded frames (held-out hashes must
    match): per dataset and variant arm, the accuracy's mean and 95 % interval, the paired difference
    from the base (mean, interval, seeds ahead) and the arm's seconds over the CNN's of the same run
    (a ratio, so runs on a busier machine still compare). `last_epoch`: score each arm by its curve's
    last point, the last epoch's held-out accuracy, also in rows run with `train.keep_best` on."""
    keyed = {label: {(r["dataset"], r["size"], r["seed"]): r for r in result["rows"]} for label, result in variants.items()}

    def accuracy(label: str, row: dict, arm: str) -> float:
        if not last_epoch:
            return row[arm]["accuracy"]
        if not row[arm].get("curve"):
            raise ValueError(f"{label} {row['dataset']} {row['size']} seed {row['seed']}: {arm} has no curve, "
                             "so no last epoch to score")  # fmt: skip
        return row[arm]["curve"][-1][1]

    if base not in keyed:
        raise ValueError(f"base {base!r} is not one of the variants {sorted(keyed)}")
    out = []
    for key in sorted(keyed[base], key=lambda k: (k[0], k[1])):
        if any(e["dataset"] == key[0] and e["size"] == key[1] for e in out):
            continue
        seeds = sorted(s for (d, z, s) in keyed[base] if (d, z) == key[:2])
        entry = {"dataset": key[0], "size": key[1], "seeds": seeds, "arms": {}}
        base_rows = [keyed[base][(key[0], key[1], s)] for s in seeds]
        for label, rows in keyed.items():
            for arm in arms:
                group = [rows.get((key[0], key[1], s)) for s in seeds]
                if any(r is None or arm not in r for r in group):
                    continue
                for r, b in zip(group, base_rows, strict=True):
                    if r["heldout_sha256"] != b["heldout_sha256"]:
                        raise ValueError(f"{label} {key[0]} seed {r['seed']}: other held-out frames than {base}")
                acc = [accuracy(label, r, arm) for r in group]
                diff = [a - accuracy(base, b, "recipe") for a, b in zip(acc, base_rows, strict=True)]
                # seconds over the CNN's of the same run only: an arm merged in from a rerun ran under another load
                ratio = [r[arm]["seconds"] / r["cnn"]["seconds"] for r in group
                         if r[arm].get("seconds") and r.get("cnn", {}).get("seconds")
                         and not r[arm].get("rerun") and not r["cnn"].get("rerun")]  # fmt: skip
                mean, ci = interval(acc)
                dmean, dci = interval(diff)
                # A recipe-only variant (`--yardsticks ""`) is set against the base run's CNN: the same
                # seeded train frames and held-out set (checked above), so the same yardstick.
                own = all("cnn" in r for r in group)
                cnn = [(r if own else b).get("cnn", {}).get("accuracy") for r, b in zip(group, base_rows, strict=True)]
                cnn = [c for c in cnn if c is not None]
                entry["arms"][f"{label}:{arm}"] = {
                    "accuracy": round(mean, 4), "accuracy_ci95": round(ci, 4),
                    "vs_base": round(dmean, 4), "vs_base_ci95": round(dci, 4),
                    "ahead_of_base": f"{sum(d > 0 for d in diff)}/{len(diff)}",
                    "vs_cnn": round(sum(a - c for a, c in zip(acc, cnn, strict=True)) / len(cnn), 4) if len(cnn) == len(acc) else None,
                    "ahead_of_cnn": f"{sum(a >= c for a, c in zip(acc, cnn, strict=True))}/{len(acc)}" if len(cnn) == len(acc) else None,
                    "cnn_of": "this run" if own else f"{base}'s run",
                    "seconds_over_cnn": round(sum(ratio) / len(ratio), 2) if ratio else None,
                }  # fmt: skip
        out.append(entry)
    lines = ["| dataset | pool | variant | accuracy | vs base (paired) | seeds ahead of base | vs cnn (seeds at or above) "
             "| seconds / cnn's |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    borrowed = False
    for e in out:
        for name, a in e["arms"].items():
            ratio = "–" if a["seconds_over_cnn"] is None else f"{a['seconds_over_cnn']:.2f}"
            mark = "" if a["cnn_of"] == "this run" else "*"
            borrowed |= bool(mark) and a["vs_cnn"] is not None
            vs_cnn = "–" if a["vs_cnn"] is None else f"{a['vs_cnn']:+.3f}{mark} ({a['ahead_of_cnn']})"
            lines.append(f"| {e['dataset']} | {e['size']:,} | {name} | {a['accuracy']:.3f} ± {a['accuracy_ci95']:.3f} | "
                         f"{a['vs_base']:+.3f} ± {a['vs_base_ci95']:.3f} | {a['ahead_of_base']} | {vs_cnn} | {ratio} |")  # fmt: skip
    if borrowed:
        lines += ["", f"\\* against the CNN of {base}'s run on the same seeded frames (this variant ran without one)"]
    if last_epoch:
        lines += ["", "Each arm scored at its last epoch (its curve's last point)."]
    return {"base": f"{base}:recipe", "epoch": "last" if last_epoch else "as run", "variants": {k: v.get("config", {}).get("overrides") for k, v in variants.items()},
            "rows": out, "markdown": "\n".join(lines)}  # fmt: skip
