"""Benchmark: can the label-error check be trusted? Precision and recall against errors injected at a
known rate.

A flywheel on the built-in simulator (demo-sized renders, the demo's training budget) with the data
engine on: the first batch trains a champion from human labels; on each later batch the simulated
labeling team (flywheel/sim/annotator.py) answers the queue wrong at `error_rate`, and the champion,
which never saw that batch, scores it. Every human label whose answer differs from the clip's hidden
ground truth is an injected error. `flywheel.engine.quality.find_label_errors` flags labels from three
sources of out-of-sample probabilities: the champion's alone, a cross-validated model of the batch's own
labels on the champion's embeddings, and their mean (the check's default); per source and minimum score
(p[suggested] - p[given]) the benchmark reports how many flags are real errors (precision) and how
many errors are flagged (recall).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.engine import _home, _ingest
from flywheel import champion, layout, loop, sim
from flywheel.config import Settings
from flywheel.engine.quality import blended_probs, cross_validated_probs, find_label_errors
from flywheel.sim.annotator import answer_queue
from flywheel.store import store_for
from flywheel.tracking import tracker_for

THRESHOLDS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def bench_settings(root: Path, *, label_budget: int, steps: int, seed: int) -> Settings:
    with _home(root):
        return Settings.model_validate({
            "train": {"steps": steps, "device": "cpu", "seed": seed},
            "engine": {"enabled": True, "label_budget": label_budget, "seed": seed},
            "gate": {"force": True, "force_reason": "benchmark: every model is promoted"},
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
        loop.label_batch(store, settings, batch_id)  # queues frames for the team
        answer_queue(store, classes=classes, error_rate=error_rate if b else 0.0, seed=seed + b)
        loop.label_batch(store, settings, batch_id)  # with the answers
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
            sources = {"champion": probs, "cross_validated": cross_validated_probs(emb, given, len(classes), seed=seed),
                       "blend (default)": blended_probs(probs, emb, given, seed=seed)}  # fmt: skip
            for name, p in sources.items():
                flagged = {f: s for f, _, _, s in find_label_errors(p, given, frame_ids=fids)}
                scores.setdefault(name, []).extend(flagged.get(f, -1.0) for f in fids)  # -1: not flagged at all
            wrong += is_wrong.tolist()
        loop.augment_batch(store, settings, batch_id)
        loop.build_dataset_version(store, settings)
        loop.train_challenger(store, settings, tracker, device="cpu")
        loop.evaluate_challenger(store, settings, tracker, device="cpu")
        loop.deploy_challenger(store, settings, tracker)
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
    return {"config": {"batches": batches, "clips": clips, "label_budget": label_budget, "error_rate": error_rate,
                       "steps": steps, "seed": seed},
            "human_labels_checked": len(wrong_a), "injected_errors": int(wrong_a.sum()),
            "rows": by_source["blend (default)"], "by_source": by_source,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
