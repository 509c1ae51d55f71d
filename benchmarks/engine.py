"""Benchmark: does the data engine buy the rare slice with fewer human labels than random sampling?

Two flywheels from the same seed, each in its own home (store + MLflow), with the same
human-label budget per iteration and the same uploads per iteration, both driven through the
production stage functions (flywheel/ingest.py, flywheel/loop.py) and the simulated labeling
team (flywheel/sim/annotator.py), so the benchmark measures the pipeline a user runs:
  engine: shadow-mode uploads (low_confidence) + active selection (hybrid) + champion auto-labels;
          every trained model is deployed (a forced gate), so it picks the next uploads and labels
  random: random uploads, uniformly random frames to label, no auto-labels (nothing is deployed;
          the newest model is only the warm start of the next)
Each iteration: simulate -> ingest -> labels (queue) -> annotator answers -> labels again ->
augmented -> dataset version -> train (warm start) -> score on one fixed test set shared by both
arms (equal frames per condition, rendered apart from either fleet).

CPU-cheap on purpose: 64x48 renders, 48 px model input, width 8, depth 1. The condition mix is
held fixed (no drift) with fog rare, so both arms see the same world however many clips the
engine's fleet records to fill its uploads. At this scale both arms stay near chance (see
BENCHMARKS.md): the label-efficiency goal needs models that learn the task.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from flywheel import ingest, layout, loop, sim
from flywheel.config import CONDITIONS, Settings
from flywheel.engine.quality import auto_accuracy_vs_truth
from flywheel.engine.shadow import fleet_filter
from flywheel.model import load_weights
from flywheel.model_input import frames_to_input
from flywheel.predict import predict
from flywheel.sim.annotator import answer_queue
from flywheel.store import store_for
from flywheel.tracking import CHALLENGER, CHAMPION, tracker_for

RARE = "fog"
MIX = {"day": 0.70, "night": 0.13, "rain": 0.12, "fog": 0.05}


@contextmanager
def _home(root: Path):
    """FLYWHEEL_HOME = `root` while settings are made: each arm's store and MLflow live under its own root."""
    old = os.environ.get("FLYWHEEL_HOME")
    os.environ["FLYWHEEL_HOME"] = str(root)
    try:
        yield
    finally:
        os.environ.pop("FLYWHEEL_HOME") if old is None else os.environ.__setitem__("FLYWHEEL_HOME", old)


def bench_settings(root: Path, *, arm: str = "engine", image_size: int, width: int, epochs: int, label_budget: int = 48,
                   seed: int = 0, shadow_threshold: float = 0.6, auto_threshold: float = 0.9) -> Settings:  # fmt: skip
    """One arm's settings, its home at `root`; every model passes the gate (the comparison is about data)."""
    with _home(root):
        return Settings.model_validate({
            "image_size": image_size,
            "sim": {"width": 64, "height": 48, "frames_per_clip": 8, "vehicles": 4,
                    "conditions_start": MIX, "conditions_end": MIX, "drift_clips": 1},
            "train": {"epochs": epochs, "batch_size": 32, "width": width, "depth": 1, "device": "cpu", "seed": seed},
            "ingest": {"workers": 2},
            "engine": {"enabled": True, "shadow_threshold": shadow_threshold, "auto_threshold": auto_threshold,
                       "label_budget": label_budget, "strategy": "hybrid" if arm == "engine" else "random",
                       "seed": seed},
            "gate": {"force": True, "force_reason": "benchmark: every model is promoted"},
            # the gate and the parity check of each deploy need test frames even from a few clips
            "dataset": {"golden_size": 0, "split": {"train": 0.7, "val": 0.1, "test": 0.2}},
        })  # fmt: skip


def test_set(settings: Settings, *, per_condition: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal frames per condition, rendered apart from either fleet: images (N, 3, S, S), labels, conditions."""
    images, labels, conds = [], [], []
    for k, cond in enumerate(CONDITIONS):
        rng = np.random.default_rng([seed, 7919, k])
        f, names = sim.render_frames(rng, per_condition, cond, settings, per_clip=settings.sim.frames_per_clip,
                                     jpeg_quality=sim.EXTRAS.jpeg_quality)  # fmt: skip
        images.append(frames_to_input(f, settings.image_size))
        labels += [settings.classes.index(n) for n in names]
        conds += [cond] * per_condition
    return np.concatenate(images), np.array(labels), np.array(conds)


def _ingest(store, settings: Settings) -> str:
    plan = ingest.plan_batch(store, min_clips=1, max_clips=10**6)
    if plan is None:
        raise ValueError("the simulator uploaded nothing to ingest")
    ingest.commit_batch(store, plan)
    ingest.validate_batch(store, plan.batch_id, settings)
    ingest.write_frames(store, plan.batch_id, settings)
    return plan.batch_id


def run_arm(arm: str, workdir: Path, *, iterations: int, clips_per_iteration: int, label_budget: int, seed: int,
            test: tuple, image_size: int, width: int, epochs: int, shadow_threshold: float,
            auto_threshold: float) -> list[dict]:  # fmt: skip
    """One flywheel; per iteration: uploads, labels spent, train frames, accuracy overall and on fog."""
    settings = bench_settings(workdir / arm, arm=arm, image_size=image_size, width=width, epochs=epochs,
                              label_budget=label_budget, seed=seed, shadow_threshold=shadow_threshold,
                              auto_threshold=auto_threshold)  # fmt: skip
    store, tracker = store_for(settings), tracker_for(settings)
    test_x, test_y, test_c = test
    rows, spent = [], 0
    for it in range(iterations):
        t0 = time.perf_counter()
        recorded0 = sim.read_state(store)["recorded"]
        sim.simulate(store, settings, clips=clips_per_iteration, seed=seed, upload_filter=fleet_filter(store, settings))
        batch_id = _ingest(store, settings)
        queued = loop.label_batch(store, settings, batch_id)["queued"]
        answered = answer_queue(store, classes=settings.classes, seed=seed)["answered"]
        stats = loop.label_batch(store, settings, batch_id)  # again, with the answers
        loop.augment_batch(store, settings, batch_id)
        manifest, _ = loop.build_dataset_version(store, settings)
        loop.train_challenger(store, settings, tracker, device="cpu")
        if arm == "engine":  # the new model decides the next uploads and labels
            loop.evaluate_challenger(store, settings, tracker, device="cpu")
            loop.deploy_challenger(store, settings, tracker)
        else:  # only the next warm start
            tracker.set_alias(CHAMPION, tracker.alias(CHALLENGER))
        model, _ = load_weights(tracker.weights(tracker.alias(CHALLENGER)))
        pred = predict(model, test_x).probs.argmax(axis=1)
        rare = test_c == RARE
        spent += answered
        frames = store.read_parquet(layout.frames_key(batch_id), columns=["frame_id", "trigger", "condition",
                                                                          "ground_truth"])  # fmt: skip
        labels = store.read_parquet(layout.labels_key(batch_id))
        per_clip = settings.sim.frames_per_clip
        train = [s for s in manifest["shards"] if s["split"] == "train"]
        fog_rows = sum(s["counts"]["condition"].get(RARE, 0) for s in train)  # originals and augmented copies
        rows.append({
            "iteration": it, "recorded": sim.read_state(store)["recorded"] - recorded0,
            "uploaded": clips_per_iteration, "triggers": dict(Counter(frames.column("trigger").to_pylist()[::per_clip])),
            "uploaded_fog_clips": frames.column("condition").to_pylist().count(RARE) // per_clip,
            "queued": queued, "human_labels": answered, "human_labels_total": spent,
            "auto_labels": stats["auto"], "auto_label_accuracy": auto_accuracy_vs_truth(labels, frames, settings.classes)["accuracy"],
            "train_frames": sum(s["rows"] for s in train), "train_fog_frames": fog_rows,
            "accuracy": float((pred == test_y).mean()), "fog_accuracy": float((pred[rare] == test_y[rare]).mean()),
            "seconds": round(time.perf_counter() - t0, 1),
        })  # fmt: skip
    return rows


def labels_to_reach(rows: list[dict], target: float) -> int | None:
    """Human labels the arm had spent when its fog accuracy first reached `target` (None: never)."""
    for r in rows:
        if r["fog_accuracy"] >= target:
            return r["human_labels_total"]
    return None


def bench_engine(workdir: str | Path, *, iterations: int = 5, clips_per_iteration: int = 24, label_budget: int = 48,
                 seed: int = 0, image_size: int = 48, width: int = 8, epochs: int = 8, test_per_condition: int = 160,
                 shadow_threshold: float = 0.6, auto_threshold: float = 0.9) -> dict:  # fmt: skip
    """Engine arm vs random arm, same seed and per-iteration human-label budget; returns per-iteration rows and the verdict."""
    workdir = Path(workdir)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    probe = bench_settings(workdir / "test", image_size=image_size, width=width, epochs=epochs)  # renders only
    test = test_set(probe, per_condition=test_per_condition, seed=seed)
    common = dict(iterations=iterations, clips_per_iteration=clips_per_iteration, label_budget=label_budget, seed=seed,
                  test=test, image_size=image_size, width=width, epochs=epochs, shadow_threshold=shadow_threshold,
                  auto_threshold=auto_threshold)  # fmt: skip
    arms = {arm: run_arm(arm, workdir, **common) for arm in ("random", "engine")}
    target = arms["random"][-1]["fog_accuracy"]
    random_labels = arms["random"][-1]["human_labels_total"]
    engine_labels_needed = labels_to_reach(arms["engine"], target)
    return {
        "config": {k: v for k, v in common.items() if k != "test"} | {"test_per_condition": test_per_condition,
                                                                      "mix": MIX, "torch_threads": torch.get_num_threads()},
        "arms": arms,
        "target_fog_accuracy": target,
        "random_labels": random_labels,
        "engine_labels_to_target": engine_labels_needed,
        "label_ratio": engine_labels_needed / random_labels if engine_labels_needed is not None and random_labels else None,
    }  # fmt: skip


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(bench_engine(d, **{k: int(v) for k, v in (a.split("=") for a in sys.argv[1:])}), indent=1))
