"""One turn of the flywheel, stage by stage: each function is what one Dagster asset does.

Stages hand over through the store and MLflow (keys, versions), never through pickles:
labels/ and augmented/ per batch -> datasets/<name>/v<N> -> MLflow `challenger` ->
evaluations/ -> deploy/ and MLflow `champion`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from flywheel import dataset, deploy, plots
from flywheel.augment import balance_report, load_pipeline, oversample, sample_grid_png
from flywheel.config import Settings
from flywheel.engine import (
    auto_label_accuracy,
    decode_images,
    find_label_errors,
    fleet_filter,
    queued_ground_truth,
    simulate_annotator,
)
from flywheel.engine.labeling import engine_labels, queue_batch
from flywheel.engine.shadow import onnx_probs
from flywheel.evaluate import evaluate_model, flat_metrics
from flywheel.gate import decide
from flywheel.ingest import frames_key, list_batches
from flywheel.labels import build_labels, load_label_studio_exports
from flywheel.model import load_weights
from flywheel.reader import ShardReader, load_arrays
from flywheel.schema import DATASET
from flywheel.store import Store
from flywheel.tracking import CHALLENGER, CHAMPION, Tracker
from flywheel.train import TrainConfig, make_loader, pick_device, train

NO_IMAGE_STATS = [c for c in DATASET.names if c != "image"]  # image min/max would bloat footers


def labels_key(batch_id: str) -> str:
    return f"labels/batch={batch_id}/part-0.parquet"


def augmented_key(batch_id: str) -> str:
    return f"augmented/batch={batch_id}/part-0.parquet"


def evaluation_key(model_name: str, version: str) -> str:
    return f"evaluations/{model_name}/v{version}.json"


def tracker_for(settings: Settings) -> Tracker:
    """The MLflow tracker of these settings; a tracking server decides its own artifact root."""
    return Tracker(
        settings.tracking_uri,
        experiment=settings.mlflow.experiment,
        model_name=settings.mlflow.model_name,
        artifact_root=None if settings.mlflow.tracking_uri else settings.home / "mlflow" / "artifacts",
    )


# ---------------------------------------------------------------- per batch


def label_batch(store: Store, settings: Settings, batch_id: str) -> dict:
    """Choose each frame's label and write labels/batch=<id>/.

    Engine off: human (Label Studio exports) > the clip's ground truth. Engine on: the champion
    auto-labels the frames it is sure of, the most useful of the rest go to the Label Studio
    queue (answered by the demo's simulated annotator, if configured), and the clip's ground
    truth is hidden so it cannot leak into training labels.
    """
    frames = store.read_parquet(frames_key(batch_id))
    e = settings.engine
    queued: dict = {}
    if e.enabled:
        session, manifest = _deployed(store, settings)
        queued = queue_batch(
            store, batch_id, frames, classes=settings.classes, champion=session,
            image_size=settings.image_size, engine=e, model_version=manifest and manifest.get("version"),
        )  # fmt: skip
        if e.simulated_annotator:
            queued["annotator"] = simulate_annotator(
                store, ground_truth=queued_ground_truth(store, frames), classes=settings.classes,
                error_rate=e.annotator_error_rate, delay_batches=e.annotator_delay_batches, seed=e.seed,
            )  # fmt: skip
        labels, stats = engine_labels(
            store, frames, classes=settings.classes, session=session, manifest=manifest, engine=e
        )
        stats["auto_accuracy"] = _auto_accuracy(labels, frames, settings)
    else:
        labels, stats = build_labels(
            frames, classes=settings.classes, human_exports=load_label_studio_exports(store),
            auto_threshold=settings.labels.auto_threshold,
        )  # fmt: skip
    store.write_parquet(labels_key(batch_id), labels, compression="zstd")
    return {**stats, "batch_id": batch_id, "key": labels_key(batch_id), "labeled": labels.num_rows,
            "queued": queued.get("queued", 0), "queue": queued}  # fmt: skip


def _deployed(store: Store, settings: Settings):
    """The champion's ONNX session and manifest, or (None, None) before the first deploy."""
    if deploy.current(store, settings.mlflow.model_name) is None:
        return None, None
    return deploy.load_deployed(store, settings.mlflow.model_name)


def _auto_accuracy(labels: pa.Table, frames: pa.Table, settings: Settings) -> dict:
    """Auto-label accuracy against the clips' ground truth, where both exist (measurement only)."""
    truth = {
        f: settings.classes.index(g)
        for f, g in zip(frames.column("frame_id").to_pylist(), frames.column("ground_truth").to_pylist(), strict=True)
        if g is not None
    }
    return auto_label_accuracy(labels, truth)


def fleet_upload_filter(store: Store, settings: Settings):
    """Shadow mode: the deployed model picks `low_confidence` uploads (None: engine off or no model)."""
    e = settings.engine
    if not e.enabled:
        return None
    return fleet_filter(store, settings.mlflow.model_name, threshold=e.shadow_threshold,
                        measure=e.shadow_measure, uploads_per_day=e.uploads_per_day)  # fmt: skip


def augment_batch(store: Store, settings: Settings, batch_id: str) -> dict:
    """Labeled frames of a batch plus offline augmented copies of rare train groups."""
    frames = store.read_parquet(frames_key(batch_id))
    labels = store.read_parquet(labels_key(batch_id))
    rows = dataset.to_dataset_rows(frames, labels, settings.classes, settings.dataset.split)
    a = settings.augment
    extra = oversample(
        rows, target_share=a.target_share, max_copies=a.max_copies, seed=a.seed, pipeline=load_pipeline(a.pipeline)
    )
    out = pa.concat_tables([rows, extra.cast(rows.schema)]) if extra.num_rows else rows
    nbytes = store.write_parquet(augmented_key(batch_id), out, compression="zstd", write_statistics=NO_IMAGE_STATS)
    return {
        "batch_id": batch_id,
        "key": augmented_key(batch_id),
        "originals": rows.num_rows,
        "augmented": extra.num_rows,
        "bytes": nbytes,
        "balance": balance_report(rows, out),
        "grid_png": sample_grid_png(extra, classes=settings.classes) if extra.num_rows else None,
    }


# ---------------------------------------------------------------- dataset


def batches_ready(store: Store) -> list[str]:
    """Batches whose augmented rows are written, oldest first."""
    return [m["batch_id"] for m in list_batches(store) if store.exists(augmented_key(m["batch_id"]))]


def new_labeled_frames(store: Store, settings: Settings) -> tuple[int, list[str]]:
    """Labeled frames (originals) in ready batches that the latest dataset version lacks."""
    name = settings.dataset.name
    included = set(dataset.load_manifest(store, name)["batches"]) if dataset.latest_version(store, name) else set()
    waiting = [b for b in batches_ready(store) if b not in included]
    n = sum(store.parquet_file(labels_key(b)).metadata.num_rows for b in waiting if store.exists(labels_key(b)))
    return n, waiting


def build_dataset_version(store: Store, settings: Settings) -> tuple[dict, bool]:
    """Append every ready batch not yet included as a new version; freeze the golden set once.

    Returns (manifest, created); with nothing new the latest manifest comes back unchanged.
    """
    name, d = settings.dataset.name, settings.dataset
    _, waiting = new_labeled_frames(store, settings)
    if not waiting:
        if dataset.latest_version(store, name) is None:
            raise ValueError("no ingested, labeled batch yet: run an ingest first (flywheel ingest)")
        return dataset.load_manifest(store, name), False
    manifest = dataset.append_version(
        store, name=name, batches={b: store.read_parquet(augmented_key(b)) for b in waiting},
        classes=settings.classes, shard_mb=d.shard_mb, row_group_rows=d.row_group_rows,
    )  # fmt: skip
    if dataset.latest_golden_version(store, name) is None and d.golden_size:
        dataset.freeze_golden(store, name, manifest, d.golden_size, seed=0)
    return manifest, True


def manifest_sha256(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- train


def train_config(settings: Settings, device: str | None = None) -> TrainConfig:
    t = settings.train
    return TrainConfig(
        epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
        label_smoothing=t.label_smoothing, width=t.width, depth=t.depth, image_size=settings.image_size,
        seed=t.seed, device=device or t.device, compile=t.compile, num_workers=t.num_workers,
        schedule=t.schedule, warmup_pct=t.warmup_pct,
    )  # fmt: skip


def train_challenger(
    store: Store, settings: Settings, tracker: Tracker, *, device: str | None = None, progress: bool = False,
    rank: int = 0, world_size: int = 1,
) -> dict:  # fmt: skip
    """Train on the latest dataset version, log the run to MLflow, register it as `challenger`."""
    name = settings.dataset.name
    manifest = dataset.load_manifest(store, name)
    cfg = train_config(settings, device)
    dev = pick_device(cfg.device)
    reader = ShardReader(
        store, manifest, split="train", image_size=cfg.image_size, seed=cfg.seed,
        batch_size=cfg.batch_size, rank=rank, world_size=world_size,
    )  # fmt: skip
    val = ShardReader(store, manifest, split="val", image_size=cfg.image_size, shuffle=False, train_aug=False,
                      batch_size=cfg.batch_size, rank=rank, world_size=world_size)  # fmt: skip
    if len(reader) == 0:
        raise ValueError(f"dataset {name} v{manifest['version']} has no train rows")
    champion = tracker.alias(CHAMPION)
    warm = tracker.weights(champion) if champion else None
    # One checkpoint folder per dataset version, manifest and process count: a run never resumes another's.
    ckpt = settings.home / "checkpoints" / f"{name}-v{manifest['version']}-{manifest_sha256(manifest)[:8]}-w{world_size}"

    def fit(on_epoch_end=None):
        return train(
            train_loader=make_loader(reader, cfg=cfg, device=dev),
            val_loader=make_loader(val, cfg=cfg, device=dev) if len(val) else None,
            classes=settings.classes, cfg=cfg, checkpoint_dir=ckpt, warm_start=warm,
            set_epoch=reader.set_epoch, progress=progress and rank == 0, on_epoch_end=on_epoch_end,
        )  # fmt: skip

    if rank != 0:  # under DDP only rank 0 talks to MLflow; the others train their share
        fit()
        return {"rank": rank}
    tags = {"dataset": name, "dataset_version": str(manifest["version"]), "stage": "train"}
    with tracker.run(f"train {name} v{manifest['version']}", tags=tags) as run_id:
        tracker.log_params(run_id, {
            "train": asdict(cfg), "classes": ",".join(settings.classes), "dataset.name": name,
            "dataset.version": manifest["version"], "dataset.manifest_sha256": manifest_sha256(manifest),
            "dataset.train_rows": len(reader), "warm_start_from": champion or "",
        })  # fmt: skip
        tracker.log_json(run_id, "config/settings.json", settings.model_dump())
        tracker.log_json(run_id, "dataset/manifest.json", manifest)
        result = fit(on_epoch_end=lambda epoch, m: tracker.log_metrics(run_id, m, step=epoch))
        tracker.log_bytes(run_id, "plots/learning_curves.png", plots.learning_curves_png(result.history))
        version = tracker.register(run_id, result.weights, tags={"dataset_version": str(manifest["version"])})
        tracker.set_tags(run_id, {"model_version": version, "device": result.device})
    return {
        "version": version, "run_id": run_id, "dataset_version": manifest["version"], "device": result.device,
        "history": result.history, "warm_started": result.warm_started, "warm_start_note": result.warm_start_note,
        "resumed_from_epoch": result.resumed_from_epoch, "train_rows": len(reader),
    }  # fmt: skip


# ---------------------------------------------------------------- evaluate and gate


def evaluation_frames(store: Store, settings: Settings, manifest: dict) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray]:
    """The test split plus the frozen golden set: images, labels, slice metadata, golden mask.

    Auto labels are left out: they are the champion's own predictions, so scoring on them
    would favour the champion by construction.
    """
    size, name = settings.image_size, settings.dataset.name
    images, labels, meta = load_arrays(store, manifest, split="test", image_size=size)
    golden = set(dataset.load_golden(store, name)["frame_ids"]) if dataset.latest_golden_version(store, name) else set()
    missing = sorted(golden - set(meta["frame_id"]))
    if missing:  # golden frames outside this version's test split (e.g. an older class list)
        gi, gl, gm = load_arrays(store, manifest, frame_ids=missing, image_size=size)
        images, labels = np.concatenate([images, gi]), np.concatenate([labels, gl])
        meta = {k: list(meta[k]) + list(gm[k]) for k in meta}
    keep = np.array([s != "auto" for s in meta["label_source"]], dtype=bool)
    images, labels = images[keep], labels[keep]
    meta = {k: [v for v, ok in zip(vals, keep, strict=True) if ok] for k, vals in meta.items()}
    mask = np.array([f in golden for f in meta["frame_id"]], dtype=bool)
    return images, labels, meta, mask


def evaluate_challenger(store: Store, settings: Settings, tracker: Tracker, *, device: str = "cpu") -> dict:
    """Score challenger and champion on the same frames, decide the gate, record it all."""
    challenger = tracker.alias(CHALLENGER)
    if challenger is None:
        raise ValueError(f"model {settings.mlflow.model_name!r} has no challenger: train one first")
    champion = tracker.alias(CHAMPION)
    manifest = dataset.load_manifest(store, settings.dataset.name)
    images, labels, meta, golden = evaluation_frames(store, settings, manifest)
    if len(labels) == 0:
        raise ValueError(f"dataset {settings.dataset.name} v{manifest['version']} has no test frames to evaluate on")
    slices = {k: meta[k] for k in ("trigger", "condition", "camera")}

    def report(version: str) -> dict:
        model, classes = load_weights(tracker.weights(version))
        if classes != settings.classes:
            return {}
        return evaluate_model(
            model, images, labels, slices, classes=settings.classes, golden_mask=golden,
            min_slice_frames=settings.gate.min_slice_frames, robustness_max_frames=512, device=device,
        )  # fmt: skip

    ch = report(challenger)
    champ = report(champion) if champion and champion != challenger else None
    decision = decide(ch, champ or None, settings.gate)
    result = {
        "challenger_version": challenger, "champion_version": champion,
        "dataset_version": manifest["version"], "frames": int(len(labels)), "golden_frames": int(golden.sum()),
        "challenger": ch, "champion": champ, "gate": decision.to_dict(),
    }  # fmt: skip
    store.write_json(evaluation_key(settings.mlflow.model_name, challenger), result)
    run_id = tracker.version_run(challenger)
    tracker.log_metrics(run_id, {f"eval/{k}": v for k, v in flat_metrics(ch).items()})
    if champ:
        tracker.log_metrics(run_id, {f"champion/{k}": v for k, v in flat_metrics(champ).items()})
    tracker.log_bytes(run_id, "plots/confusion.png", plots.confusion_png(np.array(ch["confusion"]), settings.classes))
    tracker.log_json(run_id, "evaluation.json", result)
    tracker.set_tags(run_id, {"gate": "passed" if decision.passed else "failed", "gate_reason": decision.reason[:500]})
    return result


# ---------------------------------------------------------------- deploy and rollback


def deploy_challenger(store: Store, settings: Settings, tracker: Tracker) -> dict:
    """Export the gated challenger to ONNX, check parity, write deploy/, move `champion`."""
    version = tracker.alias(CHALLENGER)
    evaluation = store.read_json(evaluation_key(settings.mlflow.model_name, version))
    if not evaluation["gate"]["passed"]:
        raise ValueError(f"challenger v{version} did not pass the gate: {evaluation['gate']['reason']}")
    model, classes = load_weights(tracker.weights(version))
    onnx_bytes = deploy.export_onnx(model, image_size=settings.image_size)
    manifest = dataset.load_manifest(store, settings.dataset.name, evaluation["dataset_version"])
    images, _, _ = load_arrays(store, manifest, split="test", image_size=settings.image_size)
    max_diff = deploy.check_parity(model, onnx_bytes, images[:64])
    g = settings.gate
    forced_by = {"who": g.force_reason.split(":")[0].strip() if ":" in (g.force_reason or "") else "config",
                 "why": g.force_reason} if evaluation["gate"].get("forced") else None  # fmt: skip
    deployed = deploy.deploy(
        store, model_name=settings.mlflow.model_name, version=f"v{version}", onnx_bytes=onnx_bytes,
        classes=classes, image_size=settings.image_size, metrics=flat_metrics(evaluation["challenger"]),
        dataset={"name": settings.dataset.name, "version": evaluation["dataset_version"],
                 "manifest_sha256": manifest_sha256(manifest)},
        mlflow_version=version, gate=evaluation["gate"], forced_by=forced_by,
    )  # fmt: skip
    tracker.set_alias(CHAMPION, version)
    run_id = tracker.version_run(version)
    tracker.set_tags(run_id, {"deployed": "true", "onnx_max_abs_diff": f"{max_diff:.2e}"})
    if forced_by:
        tracker.set_tags(run_id, {"forced_by": forced_by["who"], "forced_why": forced_by["why"]})
    return {**deployed, "onnx_max_abs_diff": max_diff, "onnx_bytes": len(onnx_bytes)}


def rollback_champion(store: Store, settings: Settings, tracker: Tracker) -> tuple[str, str]:
    """Move current.json and the `champion` alias back to the previous champion."""
    frm, to = deploy.rollback(store, settings.mlflow.model_name)
    tracker.set_alias(CHAMPION, to.removeprefix("v"))
    return frm, to


def champion_status(store: Store, settings: Settings) -> dict | None:
    cur = deploy.current(store, settings.mlflow.model_name)
    if cur is None:
        return None
    m = store.read_json(cur["manifest"])
    keys = ("accuracy", "macro_f1", "ece")
    return {
        "version": cur["version"], "dataset": m.get("dataset"), "deployed_at": m.get("deployed_at"),
        "metrics": {k: m["metrics"][k] for k in keys if k in m.get("metrics", {})},
        "history": cur.get("history", []),
    }  # fmt: skip


def checkpoint_root(settings: Settings) -> Path:
    return settings.home / "checkpoints"


def rare_condition(settings: Settings) -> str:
    """The condition the fleet sees least at the start: the slice the demo watches."""
    start = settings.sim.conditions_start
    return min(start, key=start.get)


def iteration_summary(store: Store, settings: Settings, tracker: Tracker) -> dict:
    """What one iteration did: dataset, challenger vs champion (overall and rare slice), gate, deploy."""
    version = tracker.alias(CHALLENGER)
    ev = store.read_json(evaluation_key(settings.mlflow.model_name, version))
    metric, rare = settings.gate.metric, f"condition={rare_condition(settings)}"
    manifest = dataset.load_manifest(store, settings.dataset.name, ev["dataset_version"])

    def scores(report: dict | None) -> tuple[float | None, float | None]:
        if not report:
            return None, None
        return report[metric], report["per_slice"].get(rare, {}).get(metric)

    ch, ch_rare = scores(ev["challenger"])
    champ, champ_rare = scores(ev["champion"])
    cur = deploy.current(store, settings.mlflow.model_name)
    return {
        "human_labels": human_labels_spent(store),
        "dataset_version": ev["dataset_version"],
        "frames": manifest["counts"]["rows"],
        "eval_frames": ev["frames"],
        "metric": metric,
        "rare_slice": rare,
        "challenger_version": version,
        "challenger": ch,
        "challenger_rare": ch_rare,
        "champion_version": ev["champion_version"],
        "champion": champ,
        "champion_rare": champ_rare,
        "gate_passed": ev["gate"]["passed"],
        "gate_reason": ev["gate"]["reason"],
        "deployed": cur["version"] if cur else None,
    }


def label_errors(store: Store, settings: Settings, batch_id: str, *, limit: int = 50) -> dict:
    """Likely wrong labels of a batch, by confident learning on the champion's out-of-sample probabilities.

    The champion never trained on this batch, so its probabilities are out of sample. Auto
    labels are left out (they are the champion's own guesses). Before the first deploy: nothing to check.
    """
    session, manifest = _deployed(store, settings)
    labels = store.read_parquet(labels_key(batch_id))
    if session is None:
        return {"checked": 0, "errors": [], "note": "no champion deployed yet"}
    keep = np.array([s != "auto" for s in labels.column("label_source").to_pylist()], dtype=bool)
    labels = labels.filter(pa.array(keep))
    if labels.num_rows < 2:
        return {"checked": labels.num_rows, "errors": [], "note": "too few human/ground-truth labels"}
    frames = store.read_parquet(frames_key(batch_id), columns=["frame_id", "image"])
    image_of = dict(zip(frames.column("frame_id").to_pylist(), frames.column("image").to_pylist(), strict=True))
    fids = labels.column("frame_id").to_pylist()
    images = decode_images([image_of[f] for f in fids], int(manifest["image_size"]), frame_ids=fids)
    probs = onnx_probs(session, images)
    errors = find_label_errors(probs, np.asarray(labels.column("label").to_pylist()), frame_ids=fids)
    named = [{"frame_id": f, "given": settings.classes[g], "suggested": settings.classes[s], "score": round(sc, 3)}
             for f, g, s, sc in errors[:limit]]  # fmt: skip
    return {"checked": len(fids), "errors": named, "flagged": len(errors)}


def human_labels_spent(store: Store) -> int:
    """Annotations that came back from humans (Label Studio exports in labeling/done/)."""
    return sum(len(e["tasks"]) for e in load_label_studio_exports(store))
