"""One turn of the flywheel on boxes (`task: detection`): what flywheel/stages.py's functions do when the
task is detection. Same store keys, dataset versions, MLflow runs and registry, deploy manifests and
champion alias as the classification task; the label of a frame is its box set.

    labels     human (Label Studio RectangleLabels) > the clip's ground-truth boxes > auto (the champion's
               boxes, on frames where it is sure of every detection); with the engine on, ground truth is
               hidden and the frames the champion is least sure of go to the Label Studio queue, pre-filled
               with its boxes
    augmented  dataset rows with their box sets and split (train clips reserved for test while a condition
               is short of test frames), plus offline copies of frames holding rare classes, boxes moved
               with the pixels (albumentations BboxParams)
    challenger a CenterNet detector (flywheel/detection/model.py) trained on the version's train rows,
               registered in MLflow like any challenger
    evaluation challenger and champion on the same frames (test split + golden set, no auto labels): COCO
               mAP overall, per class and per slice, and the gate on mAP@.5 (flywheel/detection/gate.py)
    deployed   the ONNX graph (heatmap, size, offset heads) with a parity check on boxes
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from flywheel import layout, plots
from flywheel.config import Settings
from flywheel.data import dataset
from flywheel.data.augment import load_pipeline
from flywheel.deployment import champion, deploy
from flywheel.detection import data, gate
from flywheel.detection.augment import box_pipeline
from flywheel.detection.export import check_parity, export_onnx, session_detect
from flywheel.detection.metrics import box_trust, coco_map
from flywheel.detection.model import (
    CenterNet,
    DetectorConfig,
    is_detector,
    load_detector,
    save_detector,
)
from flywheel.detection.train import detect, train_detector
from flywheel.evaluation import approvals, evalset
from flywheel.labeling import labelstudio
from flywheel.labeling.labels import fingerprint
from flywheel.labeling.queue import frames_rng, read_exports, write_queue
from flywheel.model_input import decode_images
from flywheel.store import Store
from flywheel.tracking import CHALLENGER, CHAMPION, Tracker
from flywheel.training.device import pick_device

SLICES = ("condition", "camera", "trigger")


# -- labels ---------------------------------------------------------------------------------------


def champion_boxes(champ: champion.Champion, frames: pa.Table) -> list[list[tuple]]:
    """The deployed detector's detections on every row of a frames table: [(class, score, x, y, w, h)] in
    pixels of each frame as stored."""
    if champ.manifest["output"]["name"] != "heatmap":
        raise ValueError(f"the deployed model {champ.version} of {champ.manifest['model_name']!r} is a frame classifier, not "
                         "a detector: with task: detection use another mlflow.model_name")  # fmt: skip
    size = int(champ.manifest["image_size"])
    heights, widths = frames.column("height").to_pylist(), frames.column("width").to_pylist()
    images = decode_images(frames.column("image").to_pylist(), size, frame_ids=frames.column("frame_id").to_pylist(),
                           heights=heights, widths=widths)  # fmt: skip
    found = session_detect(champ.session, images)
    return [[(c, s, x * w / size, y * h / size, bw * w / size, bh * h / size) for c, s, x, y, bw, bh in dets]
            for dets, h, w in zip(found, heights, widths, strict=True)]  # fmt: skip


def label_batch(store: Store, settings: Settings, batch_id: str) -> dict:
    """Each frame's box set for batch `batch_id` (labels/batch=<id>/, schema DETECTION_LABELS) and the stats."""
    frames = store.read_parquet(layout.frames_key(batch_id))
    classes, e, d = settings.classes, settings.engine, settings.detection
    fids = frames.column("frame_id").to_pylist()
    champ = champion.deployed(store, settings) if e.enabled else None
    found = champion_boxes(champ, frames) if champ is not None and frames.num_rows else None
    n = len(fids)
    boxes: list[list[dict] | None] = [None] * n
    source, confidence = [""] * n, [1.0] * n
    if not e.enabled:  # the ground-truth wall: with the engine on, the clips' own boxes never train a model
        for i, b in enumerate(frames.column("boxes").to_pylist()):
            if b is not None:
                boxes[i], source[i] = [{**x, "track_id": None} for x in b], "ground_truth"
    skipped: list[dict] = []
    humans = labelstudio.human_boxes(read_exports(store), classes, skipped=skipped)
    for i, fid in enumerate(fids):
        if fid in humans:
            boxes[i], source[i] = data.as_stored(humans[fid], classes), "human"
    unsure = np.zeros(n)
    auto_rejected, trust = 0, None
    if found is not None:
        lo, hi = d.unsure_band
        unsure = np.array([sum(lo <= s < hi for _, s, *_ in dets) for dets in found], float)
        trust = champion_trust(store, settings, champ) if e.auto_labels else None
        trusted = set(trust["trusted"]) if trust else None
        if e.auto_labels:
            for i in np.flatnonzero(unsure == 0):
                sure = [b for b in found[i] if b[1] >= d.min_score]
                if boxes[i] is None and (trusted is None or all(b[0] in trusted for b in sure)):
                    boxes[i], source[i] = data.as_stored(sure, classes), "auto"
                    confidence[i] = min((b[1] for b in sure), default=1.0)
            auto_rejected = int(sum(1 for i in range(n) if boxes[i] is None))
    queued = _queue(store, settings, batch_id, frames, found, unsure, labeled=[b is not None for b in boxes],
                    model_version=champ and champ.version) if e.enabled else {}  # fmt: skip
    kept = [i for i in range(n) if boxes[i] is not None]
    labels = data.labels_table([fids[i] for i in kept], [boxes[i] for i in kept], [source[i] for i in kept],
                               [confidence[i] for i in kept])  # fmt: skip
    store.write_parquet(layout.labels_key(batch_id), labels, compression="zstd")
    by_source = Counter(source[i] for i in kept)
    return {
        "batch_id": batch_id, "key": layout.labels_key(batch_id), "labeled": len(kept), "unlabeled": n - len(kept),
        **{s: by_source.get(s, 0) for s in ("human", "ground_truth", "auto")},
        "auto_below_threshold": auto_rejected, "boxes": sum(len(boxes[i]) for i in kept),
        "per_class": data.box_counts(labels), "skipped_exports": skipped,
        "scored_on": champ.scored_on if found is not None else None,
        "queued": queued.get("queued", 0), "queue": queued,
        "auto_vs_truth": _auto_vs_truth(labels, frames, classes) if e.enabled else None, "auto_trust": trust,
    }  # fmt: skip


def champion_trust(store: Store, settings: Settings, champ: champion.Champion) -> dict | None:
    """Which classes' boxes the champion may auto-label (`engine.auto_min_precision`, over at least
    `engine.auto_min_support` of its sure detections): its per-class precision on the golden frames of the
    latest dataset version (`metrics.box_trust`); None with the setting unset, no class before a golden set."""
    e, name = settings.engine, settings.dataset.name
    if e.auto_min_precision is None:
        return None
    golden = evalset.load_golden(store, name)["frame_ids"] if evalset.latest_golden_version(store, name) else []
    if not golden:
        return {"trusted": [], "per_class": {}, "frames": 0, "note": "no golden frames yet: no auto labels"}
    images, truth, _ = data.load_frames(store, dataset.load_manifest(store, name), settings.classes,
                                        image_size=int(champ.manifest["image_size"]), frame_ids=golden)  # fmt: skip
    return box_trust(truth, session_detect(champ.session, images), settings.classes, min_score=settings.detection.min_score,
                     min_precision=e.auto_min_precision, min_support=e.auto_min_support)  # fmt: skip


def _queue(store: Store, settings: Settings, batch_id: str, frames: pa.Table, found: list[list[tuple]] | None,
           unsure: np.ndarray, *, labeled: list[bool], model_version: str | None) -> dict:  # fmt: skip
    """Queue at most `engine.label_budget` frames for people: those with the most detections the champion is
    unsure of (score in `detection.unsure_band`), pre-filled with its boxes; without a champion a random
    sample. A batch is queued once."""
    key, e = layout.queue_key(batch_id), settings.engine
    if store.exists(key):
        return {"key": key, "queued": len(store.read_json(key)), "strategy": "queued by an earlier run"}
    fids = frames.column("frame_id").to_pylist()
    if found is None:
        ranked = sorted(fids)
        picks = frames_rng(e.seed, ranked).choice(len(ranked), size=min(e.label_budget, len(ranked)), replace=False)
        chosen, predictions, strategy = [ranked[i] for i in picks], None, "random (no champion)"
    else:
        candidates = [i for i in range(len(fids)) if not labeled[i] or unsure[i] > 0]
        order = sorted(candidates, key=lambda i: (-unsure[i], fids[i]))[: e.label_budget]
        chosen, strategy = [fids[i] for i in order], "most unsure detections"
        predictions = [[(settings.classes[c], s, x, y, w, h) for c, s, x, y, w, h in found[i]
                        if s >= settings.detection.min_score] for i in order]  # fmt: skip
    if chosen:
        write_queue(store, batch_id, frames, chosen, detection=True, box_predictions=predictions,
                    model_version=model_version, image_url_prefix=e.image_url_prefix)  # fmt: skip
    return {"key": key, "queued": len(chosen), "candidates": len(fids), "strategy": strategy}


def _auto_vs_truth(labels: pa.Table, frames: pa.Table, classes: list[str]) -> dict | None:
    """The auto labels' mAP@.5 against the clips' hidden ground-truth boxes (a simulated fleet has them)."""
    auto = labels.filter(pc.equal(labels.column("label_source"), "auto")).to_pylist()
    truth = dict(zip(frames.column("frame_id").to_pylist(), frames.column("boxes").to_pylist(), strict=True))
    pairs = [(r, truth[r["frame_id"]]) for r in auto if truth.get(r["frame_id"]) is not None]
    if not pairs:
        return None
    gt = [data.as_tuples(t, classes) for _, t in pairs]
    dets = [[(c, r["label_confidence"], x, y, w, h) for c, x, y, w, h in data.as_tuples(r["boxes"], classes)] for r, _ in pairs]
    return {"frames": len(pairs), "map50": coco_map(gt, dets, classes)["map50"]}


# -- augmented --------------------------------------------------------------------------------------


def augment_batch(store: Store, settings: Settings, batch_id: str) -> dict:
    """A batch's labeled frames as dataset rows with box sets and split, plus augmented copies of frames that
    hold rare classes (`augment.target_share`, `augment.max_copies`)."""
    frames = store.read_parquet(layout.frames_key(batch_id))
    labels = store.read_parquet(layout.labels_key(batch_id))
    rows = data.to_rows(frames, labels, settings.dataset.split)
    counts = evalset.test_counts(store, settings.dataset.name, batch_id)
    rows, reserved = evalset.reserve_test_clips(rows, counts, settings.eval)  # condition slices short of test frames
    a = settings.augment
    pipeline = box_pipeline(load_pipeline(a.pipeline), seed=a.seed)
    extra = data.rare_copies(rows, settings.classes, target_share=a.target_share, max_copies=a.max_copies,
                             seed=a.seed, pipeline=pipeline)  # fmt: skip
    out = pa.concat_tables([rows, extra]) if extra.num_rows else rows
    out = out.replace_schema_metadata({dataset.SOURCE_KEY: fingerprint(labels).encode()})
    key = layout.augmented_key(batch_id)
    nbytes = store.write_parquet(key, out, compression="zstd", write_statistics=[c for c in out.column_names if c != "image"])
    return {"batch_id": batch_id, "key": key, "originals": rows.num_rows, "augmented": extra.num_rows, "bytes": nbytes,
            "reserved_for_test": reserved,
            "boxes_before": data.box_counts(rows.filter(pc.equal(rows.column("split"), "train"))),
            "boxes_after": data.box_counts(out.filter(pc.equal(out.column("split"), "train")))}  # fmt: skip


# -- challenger -------------------------------------------------------------------------------------


def detector_config(settings: Settings) -> DetectorConfig:
    return DetectorConfig(num_classes=len(settings.classes), image_size=settings.image_size, width=settings.detection.width)


def _inputs(manifest: dict, settings: Settings) -> str:
    """What makes a challenger: the version's content, the recipe and the classes (a tag on its run)."""
    key = [dataset.manifest_sha256(manifest), settings.detection.model_dump(), settings.image_size, settings.classes,
           settings.train.seed]  # fmt: skip
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def kept_challenger(store: Store, settings: Settings, tracker: Tracker) -> dict | None:
    """The current challenger's result when it trained on exactly these inputs, else None."""
    manifest = dataset.load_manifest(store, settings.dataset.name)
    current = tracker.alias(CHALLENGER)
    if current is None:
        return None
    run_id = tracker.version_run(current)
    if tracker.run_tags(run_id).get("inputs") != _inputs(manifest, settings):
        return None
    return {"version": current, "run_id": run_id, "dataset_version": manifest["version"], "device": "-",
            "history": tracker.read_json(run_id, "history.json"), "train_rows": dataset.split_rows(manifest, "train"),
            "up_to_date": True, "task": "detection"}  # fmt: skip


def train_challenger(store: Store, settings: Settings, tracker: Tracker, *, device: str | None = None,
                     progress: bool = False, rank: int = 0, world_size: int = 1,
                     log: Callable[[str], None] | None = None) -> dict:  # fmt: skip
    """Train a detector on the latest version's train rows (offline copies included), score it on val, log
    the run to MLflow and register it as `challenger`; on the compute device (a GPU where there is one, bf16),
    under torchrun DDP over `world_size` ranks (rank 0 alone talks to MLflow)."""
    name, d = settings.dataset.name, settings.detection
    manifest = dataset.load_manifest(store, name)
    kept = kept_challenger(store, settings, tracker)
    if kept is not None:
        return kept
    cfg = detector_config(settings)
    images, boxes, _ = data.load_frames(store, manifest, settings.classes, image_size=cfg.image_size, split="train")
    if not len(images):
        raise ValueError(f"dataset {name} v{manifest['version']} has no train rows to train a detector on")
    dev = pick_device(device or settings.train.device)
    recipe = {"steps": d.steps, "batch_size": d.batch_size, "lr": d.lr, "seed": settings.train.seed,
              "augmentation": d.augmentation, "device": dev, "distributed": world_size > 1}  # fmt: skip
    if rank != 0:  # its share of every step; rank 0 reports
        train_detector(images, boxes, cfg, **recipe)
        return {"rank": rank}
    val_images, val_boxes, _ = data.load_frames(store, manifest, settings.classes, image_size=cfg.image_size,
                                                split="val", originals=True, no_auto=True)  # fmt: skip
    tags = {"dataset": name, "dataset_version": str(manifest["version"]), "stage": "train", "task": "detection",
            "inputs": _inputs(manifest, settings)}  # fmt: skip
    with tracker.run(f"train detector {name} v{manifest['version']}", tags=tags) as run_id:
        tracker.log_params(run_id, {"detection": d.model_dump(), "image_size": cfg.image_size, "task": "detection",
                                    "classes": ",".join(settings.classes), "dataset.name": name,
                                    "dataset.version": manifest["version"], "seed": settings.train.seed,
                                    "dataset.manifest_sha256": dataset.manifest_sha256(manifest),
                                    "dataset.train_rows": len(images), "ranks": world_size})  # fmt: skip
        tracker.log_json(run_id, "config/settings.json", settings.model_dump())
        tracker.log_json(run_id, "dataset/manifest.json", manifest)
        started, history = time.monotonic(), []

        def report(step: int, loss: float) -> None:
            history.append({"epoch": step, "train_loss": round(loss, 4)})
            tracker.log_metrics(run_id, {"train_loss": loss}, step=step)
            if log is not None:
                left = (time.monotonic() - started) / step * (d.steps - step)
                log(f"step {step}/{d.steps}: train_loss {loss:.3f}, about {left:.0f} s left")

        model, _ = train_detector(images, boxes, cfg, progress=report, **recipe)
        seconds = time.monotonic() - started
        val = coco_map(val_boxes, detect(model, val_images), settings.classes) if len(val_images) else None
        if val is not None and history:
            history[-1] = {**history[-1], "val_map50": val["map50"], "val_map": val["map"]}
            tracker.log_metrics(run_id, {"val_map50": val["map50"] or 0.0, "val_map": val["map"] or 0.0})
        tracker.log_json(run_id, "history.json", history)
        if history:
            tracker.log_bytes(run_id, "plots/learning_curves.png", plots.learning_curves_png(history))
        check = _against_yardstick(settings, model, images, boxes, val_images, val_boxes, cfg)
        if check is not None:
            tracker.log_metrics(run_id, {"yardstick_val_map50": check["yardstick"] or 0.0})
            tracker.set_tags(run_id, {"baseline_check": check["verdict"]})
        weights = save_detector(model, settings.classes)
        about = f"CenterNet detector trained on {name} v{manifest['version']} ({len(images)} train rows, {d.steps} steps)."
        version = tracker.register(run_id, weights, tags={"dataset_version": str(manifest["version"]), "task": "detection"},
                                   description=about)  # fmt: skip
        tracker.set_tags(run_id, {"model_version": version, "device": str(dev),
                                  "mlflow.runName": f"{settings.mlflow.model_name} v{version} on {name} v{manifest['version']}"})  # fmt: skip
    return {"version": version, "run_id": run_id, "dataset_version": manifest["version"], "device": str(dev),
            "history": history, "train_rows": len(images), "up_to_date": False, "task": "detection",
            "val": val and {k: val[k] for k in ("map50", "map", "images", "boxes")},
            "training_seconds": round(seconds, 1), "yardstick": check}  # fmt: skip


def _against_yardstick(settings: Settings, model, images: np.ndarray, boxes: list, val_images: np.ndarray,
                       val_boxes: list, cfg: DetectorConfig) -> dict | None:  # fmt: skip
    """The challenger against a plain detector on val: the same network trained the standard way
    (`detection.yardstick_steps` steps, no augmentation) on the same train frames, and the untrained network
    as the floor. Verdict: `broken` when the yardstick's mAP@.5 does not clear the floor (it did not learn, so
    the comparison shows nothing), `short` when the challenger is below it, else `ok`. None without val boxes
    or with `detection.yardstick_steps: 0`."""
    d = settings.detection
    if not d.yardstick_steps or not sum(len(b) for b in val_boxes):
        return None
    started = time.monotonic()
    plain, _ = train_detector(images, boxes, cfg, steps=d.yardstick_steps, batch_size=d.batch_size, lr=d.lr,
                              seed=settings.train.seed + 1, augmentation=False)  # fmt: skip
    seconds = time.monotonic() - started
    torch.manual_seed(settings.train.seed + 2)
    untrained = CenterNet(cfg).eval()
    score = {name: coco_map(val_boxes, detect(m, val_images), settings.classes)["map50"] or 0.0
             for name, m in (("challenger", model), ("yardstick", plain), ("untrained", untrained))}  # fmt: skip
    verdict = ("broken" if score["yardstick"] <= score["untrained"] + 0.01 else
               "short" if score["challenger"] < score["yardstick"] else "ok")  # fmt: skip
    return {"metric": "map50", "verdict": verdict, "challenger": round(score["challenger"], 4),
            "yardstick": round(score["yardstick"], 4), "untrained": round(score["untrained"], 4),
            "yardstick_steps": d.yardstick_steps, "yardstick_seconds": round(seconds, 1), "val_frames": len(val_images)}  # fmt: skip


# -- evaluation -------------------------------------------------------------------------------------


def _evaluation_frames(store: Store, settings: Settings, manifest: dict) -> tuple[np.ndarray, list, dict, np.ndarray]:
    """The test split's originals plus the golden set, without auto labels: images, boxes, META, golden mask."""
    name, size, classes = settings.dataset.name, settings.image_size, settings.classes
    images, boxes, meta = data.load_frames(store, manifest, classes, image_size=size, split="test", originals=True,
                                           no_auto=True)  # fmt: skip
    golden = set(evalset.load_golden(store, name)["frame_ids"]) if evalset.latest_golden_version(store, name) else set()
    missing = sorted(golden - set(meta["frame_id"]))
    if missing:
        gi, gb, gm = data.load_frames(store, manifest, classes, image_size=size, frame_ids=missing, no_auto=True)
        images, boxes = np.concatenate([images, gi]), boxes + gb
        meta = {k: list(meta[k]) + list(gm[k]) for k in meta}
    return images, boxes, meta, np.array([f in golden for f in meta["frame_id"]], dtype=bool)


def _report(truth: list, dets: list, classes: list[str], meta: dict) -> dict:
    """`coco_map` with each slice's frame count as `n` (the gate's word for it)."""
    r = coco_map(truth, dets, classes, slices={k: meta[k] for k in SLICES})
    r["per_slice"] = {k: {**v, "n": v["images"]} for k, v in r["per_slice"].items()}
    return r


def evaluate_challenger(store: Store, settings: Settings, tracker: Tracker, *, device: str = "auto") -> dict:
    """Challenger and champion detect on the same frames; COCO mAP of both, the gate, the fixed held-out set."""
    challenger = tracker.alias(CHALLENGER)
    if challenger is None:
        raise ValueError(f"model {settings.mlflow.model_name!r} has no challenger: train one first")
    repair = champion.reconcile(store, settings, tracker)
    champ = tracker.alias(CHAMPION)
    key = layout.evaluation_key(settings.mlflow.model_name, challenger)
    if champ == challenger and store.exists(key):
        return {**store.read_json(key), "champion_repair": repair, "plots": {}, "up_to_date": True}
    name, classes = settings.dataset.name, settings.classes
    manifest = dataset.load_manifest(store, name)
    images, truth, meta, golden = _evaluation_frames(store, settings, manifest)
    if not len(images):
        raise ValueError(f"dataset {name} v{manifest['version']} has no test frames to evaluate on")
    models, dets, shas = {}, {}, {}
    for version in {challenger, *([champ] if champ and champ != challenger else [])}:
        weights = tracker.weights(version)
        shas[version] = hashlib.sha256(weights).hexdigest()
        if not is_detector(weights):
            raise ValueError(f"{settings.mlflow.model_name} v{version} is a frame classifier, not a detector: with "
                             "task: detection use another mlflow.model_name")  # fmt: skip
        model, their_classes = load_detector(weights)
        if their_classes == classes:
            models[version], dets[version] = model, detect(model, images)
    if challenger not in models:
        raise ValueError(f"challenger v{challenger} was trained on another class list than {classes}")
    ch = _report(truth, dets[challenger], classes, meta)
    has_champion = bool(champ) and champ != challenger and champ in models
    cp = _report(truth, dets[champ], classes, meta) if has_champion else None
    slices = {**{k: meta[k] for k in SLICES}, "set": np.where(golden, "golden", "test").tolist()}
    decision = gate.decide_boxes(ch, cp, settings.gate, floor=settings.detection.floor, truth=truth,
                                 ch_dets=dets[challenger], champ_dets=dets.get(champ), slices=slices, classes=classes,
                                 newer_data=has_champion and _newer(tracker, challenger, champ))  # fmt: skip
    fixed = _on_fixed_set(store, settings, manifest, {"challenger": models[challenger],
                                                      "champion": models.get(champ) if has_champion else None})  # fmt: skip
    result = {
        "task": "detection", "challenger_version": challenger, "champion_version": champ,
        "dataset_version": manifest["version"], "frames": len(images), "golden_frames": int(golden.sum()),
        "challenger": ch, "champion": cp, "gate": decision.to_dict(), "device": "cpu", "champion_repair": repair,
        "fixed_set": fixed, "weights_sha256": {"challenger": shas[challenger], "champion": shas.get(champ)},
    }  # fmt: skip
    store.write_json(key, result)
    run_id = tracker.version_run(challenger)
    tracker.log_metrics(run_id, {f"eval/{k}": v for k, v in _flat(ch).items()})
    if cp:
        tracker.log_metrics(run_id, {f"champion/{k}": v for k, v in _flat(cp).items()})
    pngs = {"per_class_map": plots.per_class_map_png(ch, cp),
            "predicted_boxes": plots.boxes_png(images[:8], truth[:8], dets[challenger][:8], classes,
                                               min_score=settings.detection.min_score)}  # fmt: skip
    tracker.log_judgement(challenger, result, pngs, passed=decision.passed, reason=decision.reason,
                          frames=f"v{manifest['version']} test + golden, {len(images)} frames")  # fmt: skip
    return {**result, "plots": pngs}


def _flat(report: dict) -> dict[str, float]:
    out = {k: report[k] for k in ("map", "map50") if report[k] is not None}
    out |= {f"class/{c}/map50": v["map50"] for c, v in report["per_class"].items() if v["map50"] is not None}
    out |= {f"slice/{s}/map50": v["map50"] for s, v in report["per_slice"].items() if v["map50"] is not None}
    return out


def _on_fixed_set(store: Store, settings: Settings, manifest: dict, models: dict) -> dict:
    """Challenger (and champion) mAP on the fixed held-out set (evalset.fixed_set), or why there is none yet."""
    name, least = settings.dataset.name, settings.eval.fixed_set_min_frames
    fixed = evalset.fixed_set(store, name, manifest, min_frames=least)
    if fixed is None:
        return evalset.no_fixed_set(manifest, least)
    images, truth, _ = data.load_frames(store, manifest, settings.classes, image_size=settings.image_size,
                                        frame_ids=fixed["frame_ids"])  # fmt: skip
    scores = {role: {k: v for k, v in coco_map(truth, detect(m, images), settings.classes).items() if k in ("map", "map50")}
              for role, m in models.items() if m is not None}  # fmt: skip
    return {"frames": len(images), "dataset_version": fixed["dataset_version"], "challenger": scores["challenger"],
            "champion": scores.get("champion"), "note": None}  # fmt: skip


def _newer(tracker: Tracker, challenger: str, champ: str) -> bool:
    versions = [tracker.version_tags(v).get("dataset_version") for v in (challenger, champ)]
    return all(v is not None and v.isdigit() for v in versions) and int(versions[0]) > int(versions[1])


# -- deployed ---------------------------------------------------------------------------------------


def deploy_challenger(store: Store, settings: Settings, tracker: Tracker) -> dict:
    """Export the gated detector to ONNX, check its boxes against torch, write deploy/, move `champion`."""
    c = approvals.clearance(store, settings, tracker)  # raises when the challenger may not deploy
    if c.already is not None:
        return {**c.already, "already_deployed": True}
    version, evaluation, judged = c.version, c.evaluation, c.judged
    model, classes = load_detector(tracker.weights(version, sha256=judged))
    onnx_bytes = export_onnx(model)
    manifest = dataset.load_manifest(store, settings.dataset.name, evaluation["dataset_version"])
    images, truth, meta, _ = _evaluation_frames(store, settings, manifest)  # the frames the gate judged on
    parity = check_parity(model, onnx_bytes, images[:64])
    if not parity["ok"]:
        raise ValueError(f"the ONNX graph of v{version} does not give the model's boxes: {parity['mismatch']}")
    int8 = _int8(store, settings, manifest, onnx_bytes, images, truth, meta["condition"]) if settings.deploy.int8 else None
    serve = "int8" if settings.deploy.serve == "int8" and int8 and int8["check"]["passed"] else "fp32"
    metrics = {k: evaluation["challenger"][k] for k in ("map", "map50")}
    deployed = champion.promote(
        store, settings, tracker, version=version, onnx_bytes=onnx_bytes, classes=classes, metrics=metrics,
        dataset={"name": settings.dataset.name, "version": evaluation["dataset_version"],
                 "manifest_sha256": dataset.manifest_sha256(manifest)},
        gate=evaluation["gate"], forced_by=c.forced_by, int8=int8, serve=serve, approval=c.approved,
    )  # fmt: skip
    run_id = tracker.version_run(version)
    tracker.log_bytes(run_id, "model/model.onnx", onnx_bytes)
    tracker.set_tags(run_id, {"deployed": "true", "onnx_max_corner_diff": f"{parity['max_corner_diff']:.2e}"})
    return {**deployed, "onnx_max_abs_diff": parity["max_score_diff"], "onnx_bytes": len(onnx_bytes), "parity": parity}


def _int8(store: Store, settings: Settings, manifest: dict, onnx_bytes: bytes, images: np.ndarray, truth: list,
          conditions: list[str]) -> dict | None:  # fmt: skip
    """The detector's int8 graph (static QDQ, calibrated on train frames), served only when it holds accuracy:
    its mAP@.5 on the evaluation frames may drop by at most `deploy.int8_max_drop` from the fp32 graph's, and no
    condition slice of `gate.min_slice_frames` frames by more than `gate.slice_tolerance`. None without frames."""
    from flywheel.deployment import quantize

    d, size, classes = settings.deploy, settings.image_size, settings.classes
    calibration, _, _ = data.load_frames(store, manifest, classes, image_size=size, split="train", originals=True)
    if not len(calibration) or not len(images):
        return None
    int8_bytes = quantize.quantize_int8(onnx_bytes, calibration[: d.calibration_frames])
    found = {k: session_detect(deploy.session(g), images) for k, g in (("fp32", onnx_bytes), ("int8", int8_bytes))}
    scores = {k: coco_map(truth, f, classes, slices={"condition": conditions}) for k, f in found.items()}
    drop = (scores["fp32"]["map50"] or 0.0) - (scores["int8"]["map50"] or 0.0)
    problems = [f"mAP@.5 drops {drop:.4f} > {d.int8_max_drop:.4f}"] if drop > d.int8_max_drop else []
    rows = []
    for name, r in scores["fp32"]["per_slice"].items():
        q = scores["int8"]["per_slice"][name]
        lost = (r["map50"] or 0.0) - (q["map50"] or 0.0)
        judged = r["images"] >= settings.gate.min_slice_frames
        rows.append({"slice": name, "n": r["images"], "drop": round(lost, 4), "judged": judged})
        if judged and lost > settings.gate.slice_tolerance:
            problems.append(f"{name} loses {lost:.3f} > {settings.gate.slice_tolerance:.3f}")
    reason = "; ".join(problems) or (f"mAP@.5 {scores['int8']['map50']:.4f} vs fp32 {scores['fp32']['map50']:.4f} "
                                     f"(drop {drop:+.4f} <= {d.int8_max_drop:.4f}), no slice worse than {settings.gate.slice_tolerance:.3f}")  # fmt: skip
    check = {"passed": not problems, "reason": reason, "map50_fp32": scores["fp32"]["map50"],
             "map50_int8": scores["int8"]["map50"], "drop": round(drop, 4), "frames": len(images), "slices": rows}  # fmt: skip
    latency = {k: quantize.latency_ms(g, size, outputs=("heatmap", "size", "offset"))
               for k, g in (("fp32", onnx_bytes), ("int8", int8_bytes))}  # fmt: skip
    return {"bytes": int8_bytes, "check": check, "latency_ms": latency}
