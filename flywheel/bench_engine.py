"""Benchmark: does the data engine buy the rare slice with fewer human labels than random sampling?

Two flywheels from the same seed, each in its own store, with the same human-label budget per
iteration and the same uploads per iteration:
  engine: shadow-mode uploads (low_confidence) + active selection (hybrid) + champion auto-labels
  random: every recorded clip uploaded in turn, uniformly random frames labeled, no auto-labels
Each iteration: simulate -> ingest -> queue -> simulated annotator (through Label Studio files)
-> labels (ground truth hidden) -> train (warm start from the previous model) -> score on one
fixed test set shared by both arms (equal frames per condition) -> the new model becomes the
champion (no gate: both arms promote every model, so the comparison is about data only).

CPU-cheap on purpose: 64x48 renders, 48 px model input, width 8, depth 1. The condition mix is
held fixed (no drift) with fog rare, so both arms see the same world however many clips the
engine's fleet records to fill its uploads.

Measured (2-core CPU, defaults: 5 iterations x 24 clips x 8 frames, 48 human labels per
iteration, seed 0, 3 min 46 s): both arms' models stay near chance (accuracy 0.26 random vs
0.30 engine, fog 0.33 both at 240 labels; chance is 0.17), so the shadow filter flags almost
every clip and no frame reaches the auto-label threshold. The engine arm still put 32 fog
frames into training against 15 for the random arm with the same 240 human labels; the
label-efficiency goal (random's final fog accuracy with <= 50% of its labels) was NOT shown
at this scale (ratio 1.0). A meaningful run needs models that learn the task (thousands of
labels, width >= 32, 64 px; a GPU).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from flywheel import deploy, ingest, sim
from flywheel.config import CONDITIONS, Settings
from flywheel.engine.autolabel import decode_images, hide_ground_truth
from flywheel.engine.labeling import EngineSettings, engine_labels, queue_batch
from flywheel.engine.quality import auto_label_accuracy
from flywheel.engine.queue import queued_ground_truth, simulate_annotator
from flywheel.engine.shadow import shadow_filter, to_model_input
from flywheel.evaluate import predict_probs
from flywheel.labels import build_labels, load_label_studio_exports
from flywheel.model import load_weights
from flywheel.store import open_store
from flywheel.train import TrainConfig, make_loader, train

RARE = "fog"
MIX = {"day": 0.70, "night": 0.13, "rain": 0.12, "fog": 0.05}


class _Frames(torch.utils.data.Dataset):
    """In-memory labeled frames for the trainer: {"image": uint8 (3, S, S), "label": int64}."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i]}


def bench_settings(root: Path, *, image_size: int, width: int, epochs: int) -> Settings:
    return Settings.model_validate({
        "store": {"root": str(root)}, "image_size": image_size,
        "sim": {"width": 64, "height": 48, "frames_per_clip": 8, "vehicles": 4,
                "conditions_start": MIX, "conditions_end": MIX, "drift_clips": 1},
        "train": {"epochs": epochs, "batch_size": 32, "width": width, "depth": 1, "device": "cpu"},
        "ingest": {"workers": 2},
    })  # fmt: skip


def test_set(settings: Settings, *, per_condition: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal frames per condition, rendered apart from either fleet: images (N, 3, S, S), labels, conditions."""
    images, labels, conds = [], [], []
    for k, cond in enumerate(CONDITIONS):
        rng = np.random.default_rng([seed, 7919, k])
        f, names = sim.render_frames(rng, per_condition, cond, settings, per_clip=settings.sim.frames_per_clip,
                                     jpeg_quality=sim.EXTRAS.jpeg_quality)  # fmt: skip
        images.append(to_model_input(f, settings.image_size))
        labels += [settings.classes.index(n) for n in names]
        conds += [cond] * per_condition
    return np.concatenate(images), np.array(labels), np.array(conds)


def _ingest(store, settings: Settings):
    plan = ingest.plan_batch(store, min_clips=1, max_clips=10**6)
    if plan is None:
        raise ValueError("the simulator uploaded nothing to ingest")
    ingest.commit_batch(store, plan)
    ingest.validate_batch(store, plan.batch_id, settings)
    ingest.write_frames(store, plan.batch_id, settings)
    return plan.batch_id, store.read_parquet(ingest.frames_key(plan.batch_id))


def _train(images, labels, settings: Settings, warm: bytes | None, seed: int):
    t = settings.train
    cfg = TrainConfig(epochs=t.epochs, batch_size=t.batch_size, width=t.width, depth=t.depth,
                      image_size=settings.image_size, device="cpu", seed=seed)  # fmt: skip
    loader = make_loader(_Frames(images, labels), cfg=cfg, device=torch.device("cpu"), shuffle=True)
    result = train(train_loader=loader, classes=settings.classes, cfg=cfg, warm_start=warm)
    return result.weights


def run_arm(arm: str, workdir: Path, *, iterations: int, clips_per_iteration: int, label_budget: int, seed: int,
            test: tuple, image_size: int, width: int, epochs: int, shadow_threshold: float,
            auto_threshold: float) -> list[dict]:  # fmt: skip
    """One flywheel; per iteration: uploads, labels spent, train frames, accuracy overall and on fog."""
    settings = bench_settings(workdir / arm, image_size=image_size, width=width, epochs=epochs)
    store = open_store(settings.store_root)
    classes, S = settings.classes, settings.image_size
    engine = EngineSettings(enabled=arm == "engine", shadow_threshold=shadow_threshold, auto_threshold=auto_threshold,
                            label_budget=label_budget, strategy="hybrid" if arm == "engine" else "random", seed=seed)  # fmt: skip
    pool_x, pool_y, pool_c = [], [], []
    weights, session, rows, spent = None, None, [], 0
    test_x, test_y, test_c = test
    for it in range(iterations):
        t0 = time.perf_counter()
        recorded0 = sim.read_state(store)["recorded"]
        upload_filter = None
        if arm == "engine" and session is not None:
            upload_filter = shadow_filter(session, {"image_size": S}, threshold=shadow_threshold)
        sim.simulate(store, settings, clips=clips_per_iteration, seed=seed, upload_filter=upload_filter)
        batch_id, frames = _ingest(store, settings)
        champion = load_weights(weights)[0] if (arm == "engine" and weights) else None
        q = queue_batch(store, batch_id, frames, classes=classes, champion=champion, image_size=S, engine=engine)
        answered = simulate_annotator(store, ground_truth=queued_ground_truth(store, frames), classes=classes, seed=seed)
        if arm == "engine":
            labels, stats = engine_labels(store, frames, classes=classes, session=session,
                                          manifest={"image_size": S}, engine=engine)  # fmt: skip
        else:
            labels, stats = build_labels(hide_ground_truth(frames), classes=classes,
                                         human_exports=load_label_studio_exports(store))  # fmt: skip
        truth = {f: classes.index(g) for f, g in zip(frames.column("frame_id").to_pylist(),
                                                      frames.column("ground_truth").to_pylist(), strict=True) if g}  # fmt: skip
        spent += answered["answered"]
        row_of = {f: i for i, f in enumerate(frames.column("frame_id").to_pylist())}
        take = [row_of[f] for f in labels.column("frame_id").to_pylist()]
        images = frames.column("image").to_pylist()
        pool_x.append(decode_images([images[i] for i in take], S))
        pool_y.append(labels.column("label").to_numpy())
        pool_c += [frames.column("condition")[i].as_py() for i in take]
        weights = _train(np.concatenate(pool_x), np.concatenate(pool_y), settings, weights, seed)
        model, _ = load_weights(weights)
        session = deploy.session(deploy.export_onnx(model, image_size=S))
        pred = predict_probs(model, test_x).argmax(axis=1)
        rare = test_c == RARE
        triggers = Counter(frames.column("trigger").to_pylist()[i] for i in range(0, frames.num_rows, settings.sim.frames_per_clip))
        rows.append({
            "iteration": it, "recorded": sim.read_state(store)["recorded"] - recorded0,
            "uploaded": clips_per_iteration, "triggers": dict(triggers),
            "uploaded_fog_clips": sum(c == RARE for c in frames.column("condition").to_pylist()) // settings.sim.frames_per_clip,
            "queued": q["queued"], "human_labels": answered["answered"], "human_labels_total": spent,
            "auto_labels": stats["auto"], "auto_label_accuracy": auto_label_accuracy(labels, truth)["accuracy"],
            "train_frames": int(sum(len(y) for y in pool_y)), "train_fog_frames": pool_c.count(RARE),
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
    probe = bench_settings(workdir / "test", image_size=image_size, width=width, epochs=epochs)
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
