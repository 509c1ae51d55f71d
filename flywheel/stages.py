"""One turn of the flywheel after ingest, stage by stage: each function is what one Dagster asset does.

    labels            label_batch           per fleet batch
    augmented         augment_batch         per fleet batch
    training_dataset  build_dataset_version
    challenger        train_challenger
    evaluation        evaluate_challenger   (the gate check reads its decision)
    deployed          deploy_challenger

(`raw_clips` and `frames` are flywheel/ingest/'s `validate_batch` and `write_frames`.) Stages
hand over through the store and MLflow (keys in flywheel/layout.py, versions), never pickles.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from flywheel import layout, plots
from flywheel.config import Settings
from flywheel.data import dataset, synth
from flywheel.data.augment import balance_report, load_pipeline, oversample, sample_grid_png
from flywheel.data.reader import load_arrays
from flywheel.data.schema import DATASET
from flywheel.deployment import champion, deploy
from flywheel.detection import stages as boxes
from flywheel.evaluation import approvals, evalset, saliency
from flywheel.evaluation.evaluate import evaluate_model, flat_metrics, score
from flywheel.evaluation.gate import PairedPredictions, decide
from flywheel.labeling.labels import build_labels, fingerprint, hide_ground_truth
from flywheel.labeling.quality import auto_accuracy_vs_truth, label_errors
from flywheel.labeling.queue import queue_batch, read_exports
from flywheel.labeling.trust import champion_trust
from flywheel.model import FrameClassifier, load_weights
from flywheel.predict import predict
from flywheel.store import Store
from flywheel.tracking import CHALLENGER, CHAMPION, Tracker
from flywheel.training import baseline, tune
from flywheel.training.device import pick_device
from flywheel.training.fit import Fitted, fit_version
from flywheel.training.train import TrainConfig

NO_IMAGE_STATS = [c for c in DATASET.names if c != "image"]  # image min/max would bloat footers


def label_batch(store: Store, settings: Settings, batch_id: str) -> dict:
    """Choose each frame's label, write labels/batch=<id>/, and check the human labels against the champion.

    The champion (if one is deployed) scores the batch once; its scores serve all three uses.
    Engine off: human (Label Studio exports) > the clip's ground truth. Engine on: the champion
    auto-labels the frames it is sure of, the most useful of the rest go to the Label Studio
    queue, and the clip's ground truth is hidden so it cannot leak into training labels.
    """
    if settings.task == "detection":
        return boxes.label_batch(store, settings, batch_id)
    frames = store.read_parquet(layout.frames_key(batch_id))
    champ = champion.deployed(store, settings)
    scores = champ.score(frames) if champ is not None and frames.num_rows else None
    e, classes = settings.engine, settings.classes
    queued: dict = {}
    if e.enabled:
        trust = champion_trust(store, settings, champ) if scores and e.auto_labels else None
        trusted = trust["trusted"] if trust else None
        queued = queue_batch(store, batch_id, frames, scores, classes=classes, engine=e,
                             model_version=champ and champ.version, auto_classes=trusted)  # fmt: skip
        labels, stats = build_labels(
            hide_ground_truth(frames), classes=classes, human_exports=read_exports(store),
            auto_probs=scores.probs if scores and e.auto_labels else None, auto_threshold=e.auto_threshold,
            auto_classes=trusted,
        )  # fmt: skip
        stats["auto_accuracy"] = auto_accuracy_vs_truth(labels, frames, classes)
        stats["auto_trust"] = trust
    else:
        labels, stats = build_labels(frames, classes=classes, human_exports=read_exports(store))
    store.write_parquet(layout.labels_key(batch_id), labels, compression="zstd")
    if scores is None:
        errors = {"checked": 0, "flagged": 0, "errors": [], "note": "no champion deployed yet"}
    else:
        errors = label_errors(scores.probs, frames.column("frame_id").to_pylist(), labels, classes,
                              embeddings=scores.embeddings, min_score=e.label_error_min_score, seed=e.seed)  # fmt: skip
    return {**stats, "batch_id": batch_id, "key": layout.labels_key(batch_id), "labeled": labels.num_rows,
            "scored_on": champ.scored_on if scores is not None else None,
            "queued": queued.get("queued", 0), "queue": queued, "label_errors": errors}  # fmt: skip


def augment_batch(store: Store, settings: Settings, batch_id: str) -> dict:
    """Labeled frames of a batch with their split, plus offline augmented copies of rare train groups."""
    if settings.task == "detection":
        return boxes.augment_batch(store, settings, batch_id)
    frames = store.read_parquet(layout.frames_key(batch_id))
    labels = store.read_parquet(layout.labels_key(batch_id))
    rows = dataset.to_dataset_rows(frames, labels, settings.classes, settings.dataset.split)
    counts = evalset.test_counts(store, settings.dataset.name, batch_id)
    rows, reserved = evalset.reserve_test_clips(rows, counts, settings.eval)  # before any train copies
    a = settings.augment
    pipeline = load_pipeline(a.pipeline, geometric=settings.geometric_aug)
    extra = oversample(rows, target_share=a.target_share, max_copies=a.max_copies, seed=a.seed, pipeline=pipeline)
    e = settings.engine  # the engine's synthetic frames of scarce conditions, made from the common one's
    made = synth.synthesize(rows, share=e.synthesize_share, seed=a.seed) if e.enabled and e.synthesize_share else None
    if made is not None and made.num_rows:
        extra = pa.concat_tables([extra.cast(rows.schema), made.cast(rows.schema)])
    out = pa.concat_tables([rows, extra.cast(rows.schema)]) if extra.num_rows else rows
    # which labels these rows carry: a relabeled batch (late human answers) is revised in the next version
    out = out.replace_schema_metadata({**(out.schema.metadata or {}), dataset.SOURCE_KEY: fingerprint(labels).encode()})
    key = layout.augmented_key(batch_id)
    nbytes = store.write_parquet(key, out, compression="zstd", write_statistics=NO_IMAGE_STATS)
    return {
        "batch_id": batch_id,
        "key": key,
        "originals": rows.num_rows,
        "reserved_for_test": reserved,
        "augmented": extra.num_rows,
        "synthesized": dict(Counter(made.column("condition").to_pylist())) if made is not None else {},
        "bytes": nbytes,
        "balance": balance_report(rows, out),
        "grid_png": sample_grid_png(extra, classes=settings.classes) if extra.num_rows else None,
    }


def build_dataset_version(store: Store, settings: Settings) -> tuple[dict, bool]:
    """Append every ready batch not yet included as a new version; grow the golden set towards its size.

    Returns (manifest, created); with nothing new the latest manifest comes back unchanged.
    """
    name, d = settings.dataset.name, settings.dataset
    _, waiting = dataset.waiting_batches(store, name)
    if not waiting:
        if dataset.latest_version(store, name) is None:
            raise ValueError("no ingested, labeled batch yet: run an ingest first (flywheel ingest)")
        return dataset.load_manifest(store, name), False
    manifest = dataset.append_version(
        store, name=name, batches={b: store.read_parquet(layout.augmented_key(b)) for b in waiting},
        classes=settings.classes, shard_mb=d.shard_mb, row_group_rows=d.row_group_rows,
        sources={b: dataset.labels_source(store, b) for b in waiting},
    )  # fmt: skip
    evalset.grow_golden(store, name, manifest, d.golden_size, seed=0)
    return manifest, True


def train_challenger(
    store: Store, settings: Settings, tracker: Tracker, *, device: str | None = None, progress: bool = False,
    rank: int = 0, world_size: int = 1, log: Callable[[str], None] | None = None,
) -> dict:  # fmt: skip
    """Train on the latest dataset version, log the run to MLflow, register it as `challenger`.
    `log` gets one line per epoch (the orchestrator's run log)."""
    if settings.task == "detection":
        return boxes.train_challenger(store, settings, tracker, device=device, progress=progress, rank=rank, world_size=world_size, log=log)
    name = settings.dataset.name
    manifest = dataset.load_manifest(store, name)
    cfg, recipe = tune.tuned_train_config(store, settings, device=device)
    dev = pick_device(cfg.device)
    sha = dataset.manifest_sha256(manifest)
    kept = _kept(store, settings, tracker, manifest, cfg, world_size=world_size)
    if kept is not None:
        return kept
    inputs = _training_inputs(manifest, cfg, settings)
    champ = tracker.alias(CHAMPION)
    warm = tracker.weights(champ) if champ and cfg.warm_start else None
    # One checkpoint folder per dataset version, manifest, process count and tuned values: a run never
    # resumes another's (a retune between two trainings on one version is another recipe).
    folder = f"{name}-v{manifest['version']}-{sha[:8]}-w{world_size}-{tune.recipe_id(cfg)}"
    ckpt = settings.home / "checkpoints" / folder

    def fit(on_epoch_end=None) -> Fitted:
        return fit_version(store, manifest, settings.classes, cfg, geometric=settings.geometric_aug, checkpoint_dir=ckpt,
                           warm_start=warm, rank=rank, world_size=world_size, progress=progress and rank == 0,
                           on_epoch_end=on_epoch_end)  # fmt: skip

    if rank != 0:  # under DDP only rank 0 talks to MLflow; the others train their share
        fit()
        return {"rank": rank}
    tags = {"dataset": name, "dataset_version": str(manifest["version"]), "stage": "train",
            "trainer_config": recipe, "inputs": inputs}  # fmt: skip
    with tracker.run(f"train {name} v{manifest['version']}", tags=tags) as run_id:
        tracker.log_params(run_id, {
            "train": cfg.model_dump(), "classes": ",".join(settings.classes), "dataset.name": name,
            "dataset.version": manifest["version"], "dataset.manifest_sha256": sha,
            "dataset.train_rows": dataset.split_rows(manifest, "train") // world_size, "warm_start_from": champ or "",
        })  # fmt: skip
        tracker.log_json(run_id, "config/settings.json", settings.model_dump())
        tracker.log_json(run_id, "dataset/manifest.json", manifest)
        started = last = time.monotonic()

        def on_epoch_end(phase: str, epoch: int, epochs: int, m: dict) -> None:
            nonlocal last
            tracker.log_metrics(run_id, {f"refit_{k}" if phase == "refit" else k: v for k, v in m.items()}, step=epoch)
            now = time.monotonic()
            took, last = now - last, now
            if log is not None:
                log(_epoch_line(phase, epoch, epochs, m, left=took * (epochs - epoch - 1)))

        fitted = fit(on_epoch_end=on_epoch_end)
        result, seconds = fitted.final, time.monotonic() - started
        tracker.log_bytes(run_id, "plots/learning_curves.png", plots.learning_curves_png(fitted.select.history))
        tracker.log_json(run_id, "history.json", fitted.select.history)
        if fitted.refit is not None:
            tracker.log_json(run_id, "refit_history.json", fitted.refit.history)
        # the select run's weights: the refit trained on val, so val cannot judge it
        check = _against_baseline(store, settings, tracker, run_id, manifest, fitted.select.weights, cfg,
                                  device=str(dev), training_seconds=seconds)  # fmt: skip
        refit = f", then refit on {fitted.refit_rows} train + val rows" if fitted.refit is not None else ""
        about = f"Trained on {name} v{manifest['version']} ({fitted.train_rows} train rows{refit}), recipe: {recipe}."
        version = tracker.register(run_id, result.weights, tags={"dataset_version": str(manifest["version"])},
                                   description=about)  # fmt: skip
        run_name = f"{settings.mlflow.model_name} v{version} on {name} v{manifest['version']}"
        tracker.set_tags(run_id, {"model_version": version, "device": result.device, "mlflow.runName": run_name})
    if check is not None:  # after the registration: the retune sensor asks for a tune run once per short version
        check = {**check, "model_version": version, "run_id": run_id, "checked_at": datetime.now(UTC).isoformat()}
        store.write_json(layout.baseline_check_key(name), check)
    return {
        "version": version, "run_id": run_id, "dataset_version": manifest["version"], "device": result.device,
        "history": fitted.select.history, "refit_history": fitted.refit.history if fitted.refit else None,
        "refit_rows": fitted.refit_rows, "best_epoch": fitted.select.best_epoch,
        "warm_started": result.warm_started, "warm_start_note": result.warm_start_note,
        "resumed_from_epoch": fitted.select.resumed_from_epoch, "train_rows": fitted.train_rows, "up_to_date": False,
        "baseline_check": check,
    }  # fmt: skip


def _epoch_line(phase: str, epoch: int, epochs: int, m: dict, *, left: float) -> str:
    """One line of the run log per epoch; `left`: seconds this phase still needs, about."""
    val = f", val_loss {m['val_loss']:.3f}, val_acc {m['val_acc']:.3f}" if "val_acc" in m else ""
    return (f"{'refit on train + val, ' if phase == 'refit' else ''}epoch {epoch + 1}/{epochs}: train_loss "
            f"{m['train_loss']:.3f}, train_acc {m['train_acc']:.3f}{val}, {m['images_per_s']:.0f} images/s, "
            f"about {left:.0f} s left")  # fmt: skip


def kept_challenger(store: Store, settings: Settings, tracker: Tracker, *, device: str | None = None,
                    world_size: int = 1) -> dict | None:  # fmt: skip
    """What `train_challenger` returns when there is nothing new to learn from (the challenger trained
    on the latest dataset version with this very recipe), else None; cheap, so the orchestrator asks
    before it launches a training process."""
    if settings.task == "detection":
        return boxes.kept_challenger(store, settings, tracker)
    manifest = dataset.load_manifest(store, settings.dataset.name)
    cfg, _ = tune.tuned_train_config(store, settings, device=device)
    return _kept(store, settings, tracker, manifest, cfg, world_size=world_size)


def _training_inputs(manifest: dict, cfg: TrainConfig, settings: Settings) -> str:
    """What makes a challenger: the dataset version's content, the recipe, the classes (a tag on its run)."""
    recipe_fields = cfg.model_dump(exclude={"device", "compile", "num_workers"})  # what changes the model
    key = [dataset.manifest_sha256(manifest), recipe_fields, settings.classes]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _kept(store: Store, settings: Settings, tracker: Tracker, manifest: dict, cfg: TrainConfig, *,
          world_size: int) -> dict | None:  # fmt: skip
    """The current challenger's result if it trained on exactly these inputs: a rerun or an iteration
    without new data keeps it rather than registering a second, identical model."""
    current = tracker.alias(CHALLENGER)
    if current is None or tracker.run_tags(tracker.version_run(current)).get("inputs") != _training_inputs(
        manifest, cfg, settings
    ):
        return None
    run_id = tracker.version_run(current)
    check_key = layout.baseline_check_key(settings.dataset.name)
    check = store.read_json(check_key) if store.exists(check_key) else None
    train_rows = dataset.split_rows(manifest, "train") // world_size
    return {"version": current, "run_id": run_id, "dataset_version": manifest["version"], "device": "-",
            "history": tracker.read_json(run_id, "history.json"), "warm_started": False, "warm_start_note": "",
            "resumed_from_epoch": None, "train_rows": train_rows, "up_to_date": True,
            "baseline_check": check if check and check["model_version"] == current else None}  # fmt: skip


def _against_baseline(store: Store, settings: Settings, tracker: Tracker, run_id: str, manifest: dict,
                      weights: bytes, cfg: TrainConfig, *, device: str, training_seconds: float) -> dict | None:  # fmt: skip
    """The challenger and the yardstick CNN on val (flywheel/training/baseline.py), logged to the training run;
    None when `tune.baseline_epochs` is 0 or the version has no val rows. The run is tagged with the
    verdict (`baseline_check`: ok, short, or broken when the yardstick itself did not learn)."""
    epochs, metric = settings.tune.baseline_epochs, settings.gate.metric
    if not epochs or not manifest["counts"]["split"].get("val"):
        return None
    check = baseline.check_challenger(store, manifest, weights, image_size=cfg.image_size, metric=metric, epochs=epochs,
                                      max_frames=settings.tune.baseline_frames, seed=cfg.seed, device=device)  # fmt: skip
    check = {**check, "training_seconds": round(training_seconds, 1),
             "share_of_training": round(check["baseline_seconds"] / training_seconds, 3) if training_seconds > 0 else None}  # fmt: skip
    # `challenger_val_*`: the returned weights' score (the trainer's `val_*` curves are per epoch)
    tracker.log_metrics(run_id, {f"challenger_val_{metric}": check["challenger"], f"baseline_val_{metric}": check["baseline"]})
    tracker.set_tags(run_id, {"short_of_baseline": str(check["short"]).lower(), "baseline_check": check["verdict"]})
    return check


def evaluate_challenger(store: Store, settings: Settings, tracker: Tracker, *, device: str = "auto") -> dict:
    """Score challenger and champion on the same frames, on the compute device; decide the gate; record it all.
    Both are scored on the fixed held-out set too (made here when this version is the first with enough
    labeled test frames): it shows whether turns improve the model, where the growing set gets harder."""
    if settings.task == "detection":
        return boxes.evaluate_challenger(store, settings, tracker, device=device)
    challenger = tracker.alias(CHALLENGER)
    if challenger is None:
        raise ValueError(f"model {settings.mlflow.model_name!r} has no challenger: train one first")
    repair = champion.reconcile(store, settings, tracker)  # judge against the model that is served
    champ = tracker.alias(CHAMPION)
    key = layout.evaluation_key(settings.mlflow.model_name, challenger)
    if champ == challenger and store.exists(key):  # the challenger is the served model: nothing to judge again
        kept = store.read_json(key)
        cm = plots.confusion_png(np.array(kept["challenger"]["confusion"]), settings.classes)
        return {**kept, "champion_repair": repair, "plots": {"confusion": cm}, "up_to_date": True}
    name = settings.dataset.name
    manifest = dataset.load_manifest(store, name)
    images, labels, meta, golden = evalset.evaluation_frames(store, name, manifest, image_size=settings.image_size)
    if len(labels) == 0:
        raise ValueError(f"dataset {name} v{manifest['version']} has no test frames to evaluate on")
    slices = {k: meta[k] for k in ("trigger", "condition", "camera")}
    dev = str(pick_device(device))
    probs: dict[str, np.ndarray] = {}
    models: dict = {}
    shas: dict[str, str] = {}

    def report(version: str) -> dict | None:
        weights = tracker.weights(version)  # raises if not the bytes registered
        shas[version] = hashlib.sha256(weights).hexdigest()
        model, classes = load_weights(weights)
        if classes != settings.classes:
            return None  # another class list: its scores on these labels mean nothing
        models[version], probs[version] = model, predict(model, images, device=dev).probs
        return evaluate_model(
            model, images, labels, slices, classes=settings.classes, golden_mask=golden, probs=probs[version],
            min_slice_frames=settings.gate.min_slice_frames, robustness_max_frames=512, device=dev,
        )  # fmt: skip

    ch = report(challenger)
    if ch is None:
        raise ValueError(f"challenger v{challenger} was trained on another class list than {settings.classes}")
    has_champion = bool(champ) and champ != challenger
    champ_report = report(champ) if has_champion else None
    paired = None
    if champ_report is not None:  # both on the same frames: the gate judges each slice on the pairs
        sets = {"set": np.where(golden, "golden", "test").tolist()}
        paired = PairedPredictions(labels, probs[challenger].argmax(1), probs[champ].argmax(1), {**slices, **sets},
                                   num_classes=len(settings.classes), class_names=settings.classes)  # fmt: skip
    decision = decide(ch, champ_report, settings.gate, paired=paired,
                      classes_changed=has_champion and champ_report is None,
                      newer_data=has_champion and _newer_data(tracker, challenger, champ))  # fmt: skip
    on_fixed = {"challenger": models[challenger], "champion": models[champ] if champ_report else None}
    fixed = _on_fixed_set(store, settings, manifest, on_fixed, dev)
    result = {
        "challenger_version": challenger, "champion_version": champ,
        "dataset_version": manifest["version"], "frames": int(len(labels)), "golden_frames": int(golden.sum()),
        "challenger": ch, "champion": champ_report, "gate": decision.to_dict(), "device": dev,
        "champion_repair": repair, "fixed_set": fixed,
        # the bytes judged: deploy and approval hold the challenger to them
        "weights_sha256": {"challenger": shas[challenger], "champion": shas.get(champ)},
    }  # fmt: skip
    store.write_json(layout.evaluation_key(settings.mlflow.model_name, challenger), result)
    run_id = tracker.version_run(challenger)
    tracker.log_metrics(run_id, {f"eval/{k}": v for k, v in flat_metrics(ch).items()})
    if champ_report:
        tracker.log_metrics(run_id, {f"champion/{k}": v for k, v in flat_metrics(champ_report).items()})
    for role, prefix in (("challenger", "fixed"), ("champion", "champion/fixed")):
        if fixed[role]:
            tracker.log_metrics(run_id, {f"{prefix}/{m}": fixed[role][m] for m in ("accuracy", "macro_f1")})
    pngs = {"confusion": plots.confusion_png(np.array(ch["confusion"]), settings.classes),
            "reliability": plots.reliability_png(probs[challenger], labels),
            "saliency": _saliency(models[challenger], images, labels, probs[challenger], slices, settings, dev)}  # fmt: skip
    tracker.log_judgement(challenger, result, pngs, passed=decision.passed, reason=decision.reason,
                          frames=f"v{manifest['version']} test + golden, {len(labels)} frames")  # fmt: skip
    return {**result, "plots": pngs}


def _on_fixed_set(store: Store, settings: Settings, manifest: dict, models: dict[str, FrameClassifier | None],
                  device: str) -> dict:  # fmt: skip
    """Each of `models` ({"challenger": model, "champion": model or None}) scored on the fixed held-out
    set (evalset.fixed_set), read by frame id from version `manifest`; while there is no fixed set
    yet, no scores and a note that says why."""
    name, least = settings.dataset.name, settings.eval.fixed_set_min_frames
    fixed = evalset.fixed_set(store, name, manifest, min_frames=least)
    if fixed is None:
        return evalset.no_fixed_set(manifest, least)
    images, labels, _ = load_arrays(store, manifest, frame_ids=fixed["frame_ids"], image_size=settings.image_size)
    scores = {role: score(predict(m, images, device=device).probs, labels, classes=settings.classes)
              for role, m in models.items() if m is not None}  # fmt: skip
    return {"frames": int(len(labels)), "dataset_version": fixed["dataset_version"], "challenger": scores["challenger"],
            "champion": scores.get("champion"), "note": None}  # fmt: skip


def _newer_data(tracker: Tracker, challenger: str, champ: str) -> bool:
    """Whether the challenger trained on a newer dataset version than the champion (the gate's tie rule)."""
    versions = [tracker.version_tags(v).get("dataset_version") for v in (challenger, champ)]
    return all(v is not None and v.isdigit() for v in versions) and int(versions[0]) > int(versions[1])


def _saliency(model: FrameClassifier, images: np.ndarray, labels: np.ndarray, probs: np.ndarray, slices: dict, settings: Settings,
              device: str) -> bytes:  # fmt: skip
    """Grad-CAM of the frames a reviewer should see (flywheel/evaluation/saliency.py) as one PNG grid."""
    picked = saliency.pick_frames(probs, labels, slices, min_slice_frames=settings.gate.min_slice_frames)
    idx = np.array([i for i, _ in picked]) if picked else np.arange(min(len(labels), 8))
    preds, names = probs.argmax(1), settings.classes
    maps = saliency.gradcam(model, images[idx], preds[idx], device=device)
    why = dict(picked)
    captions = [f"{names[labels[i]]}->{names[preds[i]]} {probs[i, preds[i]]:.2f}\n{why.get(int(i), '')}" for i in idx]
    return saliency.saliency_png(images[idx], maps, captions)


def deploy_challenger(store: Store, settings: Settings, tracker: Tracker) -> dict:
    """Export the gated challenger to ONNX, check parity, write deploy/, move `champion`."""
    if settings.task == "detection":
        return boxes.deploy_challenger(store, settings, tracker)
    size = settings.image_size
    c = approvals.clearance(store, settings, tracker)  # raises when the challenger may not deploy
    if c.already is not None:
        return {**c.already, "already_deployed": True}  # a rerun: nothing to move
    version, evaluation = c.version, c.evaluation
    model, classes = load_weights(tracker.weights(version, sha256=c.judged))  # the gated bytes, or it raises
    onnx_bytes = deploy.export_onnx(model, image_size=size)
    manifest = dataset.load_manifest(store, settings.dataset.name, evaluation["dataset_version"])
    # the frames the gate judged on (test split + golden set, without auto labels): int8 is held to the same
    images, labels, meta, _ = evalset.evaluation_frames(store, settings.dataset.name, manifest, image_size=size)
    max_diff = deploy.check_parity(model, onnx_bytes, images[:64])
    # imported here: onnxruntime's quantization tools take ~0.8 s to import, and most callers never quantize
    from flywheel.deployment import quantize

    int8 = quantize.int8_for_deploy(store, settings, manifest, onnx_bytes, images, labels, meta) if settings.deploy.int8 else None
    serve = "int8" if settings.deploy.serve == "int8" and int8 and int8["check"]["passed"] else "fp32"
    deployed = champion.promote(  # current.json and the `champion` alias, under one lease
        store, settings, tracker, version=version, onnx_bytes=onnx_bytes, classes=classes,
        metrics=flat_metrics(evaluation["challenger"]),
        dataset={"name": settings.dataset.name, "version": evaluation["dataset_version"],
                 "manifest_sha256": dataset.manifest_sha256(manifest)},
        gate=evaluation["gate"], forced_by=c.forced_by, int8=int8, serve=serve, approval=c.approved,
    )  # fmt: skip
    run_id = tracker.version_run(version)
    tracker.log_bytes(run_id, "model/model.onnx", onnx_bytes)  # beside the MLflow model it was exported from
    tracker.set_tags(run_id, {"deployed": "true", "onnx_max_abs_diff": f"{max_diff:.2e}"})
    return {**deployed, "onnx_max_abs_diff": max_diff, "onnx_bytes": len(onnx_bytes)}
