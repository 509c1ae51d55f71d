"""Benchmark: can the label-error check be trusted? Precision and recall against errors injected at a
known rate.

A flywheel on the built-in simulator (demo-sized renders, the demo's training budget) with the data
engine on: the first batch trains a champion from human labels; on each later batch the simulated
labeling team (flywheel/sim/annotator.py) answers the queue wrong at `error_rate`, and the champion,
which never saw that batch, scores it. Every human label whose answer differs from the clip's hidden
ground truth is an injected error. `flywheel.labeling.quality.find_label_errors` flags labels from three
sources of out-of-sample probabilities: the champion's alone, a cross-validated model of the batch's own
labels on the champion's embeddings, and their mean (the check's default); per source and minimum score
(p[suggested] - p[given]) the benchmark reports how many flags are real errors (precision) and how
many errors are flagged (recall).

`bench_label_errors_frames` asks the same of another dataset (benchmarks/datasets.py): a champion
trained at the defaults on one stream of its frames checks the labels of a disjoint stream, flipped
to another class at `error_rate` as the simulated team flips them; so the default minimum score
(picked on the simulator) is measured on data it was not tuned for.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.datasets import make_frames
from benchmarks.engine import EVERY_MODEL_PROMOTED, _home, _ingest
from benchmarks.recipe import add_batch, recipe_settings, train_recipe
from flywheel import layout, sim, stages
from flywheel.config import Settings
from flywheel.deployment import champion
from flywheel.labeling.quality import blended_probs, cross_validated_probs, find_label_errors
from flywheel.model import load_weights
from flywheel.model_input import decode_images
from flywheel.predict import predict
from flywheel.sim.annotator import answer_queue
from flywheel.store import store_for
from flywheel.tracking import tracker_for

THRESHOLDS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def bench_settings(root: Path, *, label_budget: int, steps: int, seed: int) -> Settings:
    with _home(root):
        return Settings.model_validate({
            "train": {"steps": steps, "device": "cpu", "seed": seed},
            "engine": {"enabled": True, "label_budget": label_budget, "seed": seed},
            "gate": EVERY_MODEL_PROMOTED,
            "tune": {"baseline_epochs": 0},
        })  # fmt: skip


def bench_label_errors(workdir: str | Path, *, batches: int = 3, clips: int = 250, label_budget: int = 400,
                       error_rate: float = 0.1, steps: int = 300, seed: int = 0) -> dict:  # fmt: skip
    settings = bench_settings(Path(workdir), label_budget=label_budget, steps=steps, seed=seed)
    store, tracker, classes = store_for(settings), tracker_for(settings), settings.classes
    scores: dict[str, list[float]] = {}
    wrong, t0 = [], time.perf_counter()
    for b in range(batches):
        sim.simulate(store, settings, clips=clips, seed=seed, upload_filter=None)
        batch_id = _ingest(store, settings)
        stages.label_batch(store, settings, batch_id)  # queues frames for the team
        answer_queue(store, classes=classes, error_rate=error_rate if b else 0.0, seed=seed + b)
        stages.label_batch(store, settings, batch_id)  # with the answers
        champ = champion.deployed(store, settings)
        if champ is not None:  # the champion never trained on this batch: its scores are out of sample
            frames = store.read_parquet(layout.frames_key(batch_id))
            labels = store.read_parquet(layout.labels_key(batch_id))
            human = [s == "human" for s in labels.column("label_source").to_pylist()]
            fids = [f for f, h in zip(labels.column("frame_id").to_pylist(), human, strict=True) if h]
            given = np.array([y for y, h in zip(labels.column("label").to_pylist(), human, strict=True) if h])
            row = {f: i for i, f in enumerate(frames.column("frame_id").to_pylist())}
            truth = frames.column("ground_truth").to_pylist()
            scored = champ.score(frames)
            rows_h = [row[f] for f in fids]
            probs, emb = scored.probs[rows_h], scored.embeddings[rows_h]  # (H, C), (H, D)
            is_wrong = given != np.array([classes.index(truth[row[f]]) for f in fids])
            for name, values in _flag_scores(probs, emb, given, len(classes), seed=seed).items():
                scores.setdefault(name, []).extend(values)
            wrong += is_wrong.tolist()
        stages.augment_batch(store, settings, batch_id)
        stages.build_dataset_version(store, settings)
        stages.train_challenger(store, settings, tracker, device="cpu")
        stages.evaluate_challenger(store, settings, tracker, device="cpu")
        stages.deploy_challenger(store, settings, tracker)
    return {"config": {"batches": batches, "clips": clips, "label_budget": label_budget, "error_rate": error_rate,
                       "steps": steps, "seed": seed},
            **_precision_recall(scores, wrong), "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def bench_label_errors_frames(name: str, workdir: str | Path, *, frames: int = 1000, error_rate: float = 0.1,
                              seed: int = 0, overrides: dict | None = None) -> dict:  # fmt: skip
    """The check on dataset `name`: a champion trained at the default settings on `frames` frames
    (the pipeline's stages, as `flywheel bench recipe` trains), then the labels of `frames` frames of
    a disjoint stream, each flipped to a uniformly drawn other class with probability `error_rate`.
    `overrides`: settings (dotted keys) instead of the defaults, e.g. a short training in a test."""
    t0 = time.perf_counter()
    settings = recipe_settings(name, Path(workdir) / name, overrides=overrides)
    store, classes = store_for(settings), settings.classes
    manifest, _ = add_batch(store, settings, make_frames(name, frames=frames, seed=seed), "b0001")
    model, _ = load_weights(train_recipe(store, settings, manifest)[0].final.weights)
    held = make_frames(name, frames=frames, seed=seed, heldout=True)
    images = decode_images(held.images, settings.image_size, heights=[held.height] * len(held),
                           widths=[held.width] * len(held))  # fmt: skip
    truth, rng = np.array(held.labels), np.random.default_rng(seed)
    flip = rng.random(len(truth)) < error_rate
    given = np.where(flip, (truth + rng.integers(1, len(classes), len(truth))) % len(classes), truth)
    scored = predict(model, images, device="cpu", embeddings=True)
    scores = _flag_scores(scored.probs, scored.embeddings, given, len(classes), seed=seed)
    accuracy = float((scored.probs.argmax(axis=1) == truth).mean())
    return {"dataset": name, "config": {"frames": frames, "error_rate": error_rate, "seed": seed,
                                        "train_steps": settings.train.steps, "image_size": settings.image_size},
            "champion_accuracy": round(accuracy, 4), **_precision_recall(scores, (given != truth).tolist()),
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def _flag_scores(probs: np.ndarray, embeddings: np.ndarray, given: np.ndarray, num_classes: int, *,
                 seed: int) -> dict[str, list[float]]:  # fmt: skip
    """Each label's flag score (-1: not flagged at all) from each source of out-of-sample probabilities:
    the champion's, the cross-validated model of the labels on its embeddings, their mean (the check's)."""
    sources = {"champion": probs, "cross_validated": cross_validated_probs(embeddings, given, num_classes, seed=seed),
               "blend (default)": blended_probs(probs, embeddings, given, seed=seed)}  # fmt: skip
    ids = [str(i) for i in range(len(given))]
    out = {}
    for name, p in sources.items():
        flagged = {f: score for f, _, _, score in find_label_errors(p, given, frame_ids=ids)}
        out[name] = [flagged.get(f, -1.0) for f in ids]
    return out


def _precision_recall(scores: dict[str, list[float]], wrong: list[bool]) -> dict:
    """Per source and minimum score: flags, precision and recall against the labels known to be wrong.
    `scores`: per source, each label's flag score (-1: not flagged)."""
    wrong_a = np.array(wrong, bool)
    by_source = {}
    for name, values in scores.items():
        scores_a, rows = np.array(values), []
        for t in THRESHOLDS:
            flag = scores_a >= max(t, 0.0)  # not flagged is -1
            hits = int((flag & wrong_a).sum())
            rows.append({"min_score": t, "flagged": int(flag.sum()), "true_errors_flagged": hits,
                         "precision": round(hits / flag.sum(), 3) if flag.any() else None,
                         "recall": round(hits / wrong_a.sum(), 3) if wrong_a.any() else None})  # fmt: skip
        by_source[name] = rows
    return {"human_labels_checked": len(wrong_a), "injected_errors": int(wrong_a.sum()),
            "rows": by_source["blend (default)"], "by_source": by_source}  # fmt: skip
