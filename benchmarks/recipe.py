"""Benchmark: the flywheel's training recipe against a plain CNN, same frames, same held-out clips.

For each dataset (benchmarks/datasets.py) and each size, in increasing order (the smaller pool is
a prefix of the larger, so the sizes are the flywheel's growing dataset):

  recipe       what the pipeline does with a fleet batch, through its own stage functions: frames
               Parquet -> `loop.label_batch` (labels, split by clip) -> `loop.augment_batch`
               (offline oversampling, settings.augment) -> `dataset.append_version` (v1 = the first
               size, v2 = v1 + the frames the next size adds, ...) -> `ShardReader` (online
               augmentation) + `train.make_loader` -> `train.train(TrainConfig.from_settings)`,
               trained from scratch on the version
  recipe_warm  the same, warm-started from the previous size's recipe_warm model (the first
               size's fresh model starts the chain), as `loop.train_challenger` warm-starts from
               the champion with `train.warm_start: true`
  baseline     `flywheel.baseline`: a plain CNN (3 x conv-BN-ReLU-maxpool, 32/64/128 channels,
               global pool, linear), Adam lr 1e-3, 20 epochs, batch 64, no augmentation, on the
               version's train originals: the same frames the recipe trains on, without its copies

All three are scored with `flywheel.predict.predict` on the same held-out frames (clips drawn
apart from the training stream), decoded once through the one model-input path. Settings are the
defaults (or `config`) with the dataset's `classes` and `image_size`, then `overrides`
(dotted keys, as `flywheel.config.load_settings` takes them), so recipe variants are compared
without code changes: `flywheel bench recipe --set train.epochs=12 --set augment.max_copies=0`.
"""

from __future__ import annotations

import hashlib
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
from flywheel import baseline, dataset, layout, loop
from flywheel.config import Settings, load_settings
from flywheel.evaluate import accuracy, confusion_matrix, macro_f1, per_class_scores
from flywheel.model import load_weights
from flywheel.model_input import decode_images
from flywheel.predict import predict
from flywheel.reader import ShardReader
from flywheel.schema import FRAMES
from flywheel.store import Store, store_for
from flywheel.train import TrainConfig, TrainResult, make_loader, pick_device, train

SIZES = (1000, 3000)
QUICK_SIZES = (96, 192)
HELDOUT = 1000
QUICK_HELDOUT = 48
ARMS = ("recipe", "recipe_warm", "baseline")


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
        "clip_key": [""] * n,
    }  # fmt: skip
    return pa.table(columns, schema=FRAMES)


def add_batch(store: Store, settings: Settings, frames: Frames, batch_id: str) -> tuple[dict, dict]:
    """One fleet batch through the pipeline's stages after ingest: labels, augmented rows, and the
    next dataset version. Returns (manifest, augment_batch's report)."""
    store.write_parquet(layout.frames_key(batch_id), frames_table(frames, batch_id))
    loop.label_batch(store, settings, batch_id)
    augmented = loop.augment_batch(store, settings, batch_id)
    d = settings.dataset
    manifest = dataset.append_version(
        store, name=d.name, batches={batch_id: store.read_parquet(layout.augmented_key(batch_id))},
        classes=settings.classes, shard_mb=d.shard_mb, row_group_rows=d.row_group_rows,
    )  # fmt: skip
    return manifest, augmented


def train_recipe(
    store: Store, settings: Settings, manifest: dict, *, warm_start: bytes | None = None
) -> TrainResult:
    """`loop.train_challenger`'s training, without MLflow or checkpoints."""
    cfg = TrainConfig.from_settings(settings)
    dev = pick_device(cfg.device)
    reader = ShardReader(store, manifest, split="train", image_size=cfg.image_size, seed=cfg.seed,
                         batch_size=cfg.batch_size, geometric=settings.geometric_aug,
                         batched=True, meta=False)  # fmt: skip
    val = ShardReader(store, manifest, split="val", image_size=cfg.image_size, shuffle=False,
                      train_aug=False, batch_size=cfg.batch_size, batched=True, meta=False)  # fmt: skip
    if len(reader) == 0:
        raise ValueError(f"dataset version v{manifest['version']} has no train rows")
    return train(
        train_loader=make_loader(reader, cfg=cfg, device=dev),
        val_loader=make_loader(val, cfg=cfg, device=dev) if len(val) else None,
        classes=settings.classes, cfg=cfg, warm_start=warm_start, set_epoch=reader.set_epoch,
    )  # fmt: skip


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


def _recipe_arm(result: TrainResult, images, labels, classes, seconds: float) -> dict:
    model, _ = load_weights(result.weights)
    last = result.history[-1]
    return {**score(model, images, labels, classes), "seconds": round(seconds, 1),
            "train_acc": round(last["train_acc"], 4),
            "val_acc": round(last.get("val_acc", float("nan")), 4),
            "warm_started": result.warm_started}  # fmt: skip


# ----------------------------------------------------------------------------- the benchmark


def bench_dataset(name: str, workdir: Path, *, sizes: tuple[int, ...], heldout: int, seed: int = 0,
                  config: str | None = None, overrides: dict | None = None,
                  baseline_epochs: int = baseline.EPOCHS, warm: bool = True,
                  on_row: Callable[[dict], None] | None = None) -> list[dict]:  # fmt: skip
    """One row per size: recipe, recipe_warm (from the second size) and baseline on one dataset.

    `baseline_epochs=0` leaves the baseline out (it does not depend on the recipe's settings)."""
    settings = recipe_settings(name, workdir / name, config=config, overrides=overrides)
    store, classes, size_px = store_for(settings), settings.classes, settings.image_size
    pool = make_frames(name, frames=max(sizes), seed=seed)
    held = make_frames(name, frames=heldout, seed=seed, heldout=True)
    if set(pool.clips) & set(held.clips):
        raise ValueError(f"{name}: held-out clips overlap the training clips")
    test_x = decode_images(held.images, size_px, heights=[held.height] * len(held),
                           widths=[held.width] * len(held))  # fmt: skip
    test_y = np.array(held.labels, np.int64)
    heldout_sha = hashlib.sha256(test_x.tobytes() + test_y.tobytes()).hexdigest()[:16]
    rows, done, warm_weights = [], 0, None
    for k, size in enumerate(sorted(sizes)):
        new = pool.take(size).skip(done)
        if len(new) == 0:
            continue
        manifest, _ = add_batch(store, settings, new, f"b{k + 1:04d}")
        done += len(new)
        t0 = time.perf_counter()
        fresh = train_recipe(store, settings, manifest)
        seconds = time.perf_counter() - t0
        row = {"dataset": name, "size": size, "pool_frames": done,
               "recipe": _recipe_arm(fresh, test_x, test_y, classes, seconds)}  # fmt: skip
        if warm and warm_weights is not None:
            t0 = time.perf_counter()
            warmed = train_recipe(store, settings, manifest, warm_start=warm_weights)
            seconds = time.perf_counter() - t0
            row["recipe_warm"] = _recipe_arm(warmed, test_x, test_y, classes, seconds)
            warm_weights = warmed.weights
        else:
            warm_weights = fresh.weights
        if baseline_epochs:
            x, y = baseline.train_originals(store, manifest, size_px)
            t0 = time.perf_counter()
            base = baseline.train_baseline(x, y, num_classes=len(classes), epochs=baseline_epochs, seed=seed)
            seconds = time.perf_counter() - t0
            row["baseline"] = {**score(base, test_x, test_y, classes), "seconds": round(seconds, 1)}
        train_rows, copies = manifest["counts"]["split"]["train"], manifest["counts"]["augmented"]
        row.update({
            "frames": train_rows - copies.get("train", 0), "train_rows": train_rows,
            "offline_copies": copies.get("train", 0), "heldout_frames": len(test_y),
            "heldout_clips": len(set(held.clips)), "heldout_sha256": heldout_sha,
            "image_size": size_px,
            "delta": round(row["recipe"]["accuracy"] - row["baseline"]["accuracy"], 4)
            if "baseline" in row else None,
        })  # fmt: skip
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def bench_recipe(workdir: str | Path | None = None, *, datasets: tuple[str, ...] = tuple(DATASETS),
                 sizes: tuple[int, ...] = SIZES, heldout: int = HELDOUT, seed: int = 0,
                 config: str | None = None, overrides: dict | None = None, quick: bool = False,
                 warm: bool = True, baseline_epochs: int = baseline.EPOCHS,
                 threads: int | None = None,
                 on_row: Callable[[dict], None] | None = None) -> dict:  # fmt: skip
    """Recipe vs baseline on each dataset and size; `quick`: tiny sizes, 1 epoch, for a smoke run.

    `threads`: torch's intra-op threads while it runs (None: torch's default, one per core); on a
    machine that other jobs share, 1 thread trains several times faster than 2 contended ones.
    """
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; known: {list(DATASETS)}")
    overrides = dict(overrides or {})
    if quick:
        sizes, heldout = QUICK_SIZES, min(heldout, QUICK_HELDOUT)
        baseline_epochs = min(baseline_epochs, 1)
        overrides.setdefault("train.epochs", 1)
        # OneCycleLR needs warmup_pct x steps > 1: batches of 16 give a tiny pool enough steps
        overrides.setdefault("train.batch_size", 16)
    t0, rows, before = time.perf_counter(), [], torch.get_num_threads()
    try:
        torch.set_num_threads(threads or before)
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            for name in datasets:
                rows += bench_dataset(name, Path(tmp), sizes=tuple(sizes), heldout=heldout,
                                      seed=seed, config=config, overrides=overrides,
                                      baseline_epochs=baseline_epochs, warm=warm,
                                      on_row=on_row)  # fmt: skip
        info = machine()
    finally:
        torch.set_num_threads(before)
    probe = recipe_settings(datasets[0], Path("."), config=config, overrides=overrides)
    return {
        "config": {
            "sizes": list(sizes), "heldout": heldout, "seed": seed, "overrides": overrides,
            "train": probe.train.model_dump(), "augment": probe.augment.model_dump(),
            "dataset_split": probe.dataset.split,
            "baseline_epochs": baseline_epochs,
            "machine": info,
        },
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
        "markdown": markdown(rows),
    }  # fmt: skip


def machine() -> dict:
    """Where the figures come from: cores, threads, versions, device, load at the end."""
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "processor": platform.machine(), "device": str(pick_device("auto")),
            "load_average": [round(x, 1) for x in os.getloadavg()]}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    """The rows as two Markdown tables: accuracy per arm, then recall per class."""

    def acc(row, arm):
        return f"{row[arm]['accuracy']:.3f}" if arm in row else "–"

    def worst(row, arm):
        if arm not in row:
            return "–"
        c, r = min(row[arm]["recall"].items(), key=lambda kv: kv[1])
        return f"{r:.2f} {c}"

    lines = [
        "| dataset | size | train frames (+ copies) | recipe | recipe warm | baseline "
        "| Δ recipe − baseline | worst class recall: recipe / baseline "
        "| seconds: recipe / warm / baseline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        secs = " / ".join(str(r[a]["seconds"]) if a in r else "–" for a in ARMS)
        delta = "–" if r["delta"] is None else f"{r['delta']:+.3f}"
        lines.append(f"| {r['dataset']} | {r['pool_frames']:,} | {r['frames']:,} "
                     f"(+ {r['offline_copies']:,}) | {acc(r, 'recipe')} | {acc(r, 'recipe_warm')} "
                     f"| {acc(r, 'baseline')} | {delta} "
                     f"| {worst(r, 'recipe')} / {worst(r, 'baseline')} | {secs} |")  # fmt: skip
    lines += ["", "| dataset | size | arm | recall per class |", "| --- | --- | --- | --- |"]
    for r in rows:
        for arm in ARMS:
            if arm in r:
                per = ", ".join(f"{c} {v:.2f}" for c, v in r[arm]["recall"].items())
                lines.append(f"| {r['dataset']} | {r['pool_frames']:,} | {arm} | {per} |")
    return "\n".join(lines)
