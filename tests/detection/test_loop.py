"""The flywheel on boxes (`task: detection`): labels, augmented rows, dataset versions, the detector challenger
in MLflow, evaluation and the gate on mAP@.5, the ONNX deploy, and the engine's queue on box scores."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest

from flywheel import ingest, layout, stages
from flywheel.config import GateSettings, load_settings
from flywheel.data import dataset
from flywheel.data.schema import DETECTION_DATASET
from flywheel.deployment import deploy
from flywheel.detection import data
from flywheel.detection.export import export_onnx, session_detect
from flywheel.detection.gate import decide_boxes
from flywheel.detection.metrics import box_trust
from flywheel.detection.model import (
    CenterNet,
    DetectorConfig,
    is_detector,
    load_detector,
    save_detector,
)
from flywheel.engine.shadow import box_shadow_filter, fleet_filter
from flywheel.labeling import labelstudio
from flywheel.labeling.queue import read_queue
from flywheel.model_input import frames_to_input
from flywheel.sim import simulate
from flywheel.store import open_store
from flywheel.tracking import CHALLENGER, CHAMPION, tracker_for

DETECT = {"task": "detection", "image_size": 48, "sim.width": 64, "sim.height": 48, "detection.steps": 12,
          "detection.batch_size": 8, "ingest.workers": 1, "detection.floor": 0.0, "eval.fixed_set_min_frames": 8,
          "dataset.golden_size": 8, "gate.resamples": 100, "detection.yardstick_steps": 6}  # fmt: skip


def _batch(store, settings, clips: int, seed: int) -> str:
    simulate(store, settings, clips=clips, seed=seed)
    plan = ingest.plan_batch(store, min_clips=1, max_clips=10**6)
    ingest.commit_batch(store, plan)
    assert not ingest.validate_batch(store, plan.batch_id, settings)["quarantined"]
    ingest.write_frames(store, plan.batch_id, settings)
    return plan.batch_id


@pytest.fixture
def loop():
    settings = load_settings(**DETECT)
    return settings, open_store(settings.store_root), tracker_for(settings)


def test_two_turns_on_boxes_label_version_train_gate_and_deploy_then_the_engine_labels(loop):
    settings, store, tracker = loop
    batch = _batch(store, settings, clips=16, seed=0)
    frames = store.read_parquet(layout.frames_key(batch))
    stats = stages.label_batch(store, settings, batch)
    # engine off: every frame labeled by its clip's ground-truth boxes, the box set kept as recorded
    assert stats["ground_truth"] == stats["labeled"] == frames.num_rows and stats["human"] == stats["auto"] == 0
    labels = store.read_parquet(layout.labels_key(batch))
    truth = dict(zip(frames.column("frame_id").to_pylist(), frames.column("boxes").to_pylist(), strict=True))
    for fid, boxes in zip(labels.column("frame_id").to_pylist(), labels.column("boxes").to_pylist(), strict=True):
        assert [(b["label"], b["x"], b["w"]) for b in boxes] == [(b["label"], b["x"], b["w"]) for b in truth[fid]]
    assert stats["boxes"] == sum(stats["per_class"].values()) > 0

    out = stages.augment_batch(store, settings, batch)
    rows = store.read_parquet(layout.augmented_key(batch))
    assert rows.schema.remove_metadata() == DETECTION_DATASET and out["originals"] == frames.num_rows
    # conditions short of test frames get whole train clips moved to test, as for the classifier
    reserved = out["reserved_for_test"]
    hashed = {c: dataset.split_for(c, settings.dataset.split) for c in rows.column("clip_id").to_pylist()}
    moved = {r["clip_id"] for r in rows.to_pylist() if r["split"] == "test" and hashed[r["clip_id"]] == "train"}
    assert reserved["clips"] == len(moved) > 0
    copies = rows.filter(pa.compute.not_equal(rows.column("augmentation"), "")).to_pylist()
    assert len(copies) == out["augmented"] > 0  # frames holding the rarer classes, copied with their boxes
    for r in copies:
        assert r["split"] == "train" and r["frame_id"].split("#aug")[0] in truth
        assert all(0 <= b["x"] and b["x"] + b["w"] <= r["width"] + 1e-3 and b["w"] > 0 for b in r["boxes"])
    assert sum(out["boxes_after"].values()) > sum(out["boxes_before"].values())

    manifest, created = stages.build_dataset_version(store, settings)
    assert created and manifest["task"] == "detection" and "boxes" in [f["name"] for f in manifest["schema"]]
    assert manifest["counts"]["class"] == data.box_counts(rows)  # boxes per class, copies included

    first = stages.train_challenger(store, settings, tracker)
    assert first["version"] == tracker.alias(CHALLENGER) and first["train_rows"] == manifest["counts"]["split"]["train"]
    assert is_detector(tracker.weights(first["version"])) and tracker.run_tags(first["run_id"])["task"] == "detection"
    assert stages.kept_challenger(store, settings, tracker)["version"] == first["version"]  # nothing new: kept
    y = first["yardstick"]  # the plain detector on val, and the untrained one it must beat to count
    assert tracker.run_tags(first["run_id"])["baseline_check"] == y["verdict"] and y["val_frames"] > 0

    ev = stages.evaluate_challenger(store, settings, tracker)
    assert ev["champion"] is None and 0 <= ev["challenger"]["map50"] <= 1
    assert ev["gate"]["passed"] and ev["gate"]["reason"].startswith("first model: map50")
    assert ev["plots"]["predicted_boxes"][:4] == b"\x89PNG"
    deployed = stages.deploy_challenger(store, settings, tracker)
    assert deployed["version"] == "v1" and deployed["parity"]["ok"] and tracker.alias(CHAMPION) == first["version"]
    session, manifest_v1 = deploy.load_deployed(store, settings.mlflow.model_name)
    assert [o.name for o in session.get_outputs()] == ["heatmap", "size", "offset"]
    assert manifest_v1["metrics"]["map50"] == ev["challenger"]["map50"]
    # int8 beside it, served only where its mAP@.5 holds against fp32's on the gate's frames
    check = manifest_v1["int8"]["check"]
    assert check["frames"] == ev["frames"] and check["drop"] == pytest.approx(check["map50_fp32"] - check["map50_int8"], abs=1e-3)
    assert manifest_v1["serve"] == ("int8" if check["passed"] else "fp32")
    assert set(manifest_v1["latency_ms"]) == {"fp32", "int8"}

    # the second turn with the engine on: people and the champion label the new batch
    second_batch, engine = _engine_turn(store, settings)
    stages.augment_batch(store, engine, second_batch)
    v2, _ = stages.build_dataset_version(store, engine)
    assert v2["version"] == 2 and v2["task"] == "detection"
    second = stages.train_challenger(store, engine, tracker)
    assert second["version"] != first["version"]
    ev2 = stages.evaluate_challenger(store, engine, tracker)
    # both detect on the same frames: the gate judges the paired difference, overall and per slice
    assert ev2["champion"] is not None and ev2["champion_version"] == first["version"]
    primary = ev2["gate"]["primary"]
    assert primary["low"] <= primary["challenger"] - primary["champion"] <= primary["high"]
    assert {s["slice"].split("=")[0] for s in ev2["gate"]["slices"]} >= {"condition", "class"}
    record = store.read_json(layout.evaluation_key(engine.mlflow.model_name, second["version"]))
    assert record["fixed_set"]["frames"] and record["fixed_set"]["champion"] is not None
    assert json.loads(json.dumps(record))["task"] == "detection"


def _engine_turn(store, settings) -> tuple[str, object]:
    """With v1 deployed: a batch labeled with the engine on (queue, people's answers, auto labels, trust), and
    the shadow trigger; returns the batch and the engine's settings."""
    engine = load_settings(**DETECT, **{"engine.enabled": True, "engine.label_budget": 10, "detection.unsure_band": (0.05, 0.4),
                                        "detection.min_score": 0.4})  # fmt: skip
    nxt = _batch(store, engine, clips=8, seed=5)
    stats = stages.label_batch(store, engine, nxt)
    assert stats["ground_truth"] == 0 and stats["scored_on"] == "CPUExecutionProvider"  # the wall holds
    [queue] = [q for q in read_queue(store) if q["batch_id"] == nxt]
    assert len(queue["tasks"]) == stats["queued"] == 10
    task = queue["tasks"][0]
    assert {"width", "height"} <= set(task["data"]) and task["predictions"][0]["model_version"] == "v1"
    assert all(r["type"] == "rectanglelabels" for r in task["predictions"][0]["result"])
    # people answer two queued frames through an export: their boxes win over anything else
    frames = store.read_parquet(layout.frames_key(nxt))
    truth = dict(zip(frames.column("frame_id").to_pylist(), frames.column("boxes").to_pylist(), strict=True))
    answered = [labelstudio.exported_box_task(k, t, [(b["label"], b["x"], b["y"], b["w"], b["h"])
                                                      for b in truth[t["data"]["frame_id"]] or []], annotator="a")
                for k, t in enumerate(queue["tasks"][:2])]  # fmt: skip
    store.write_json(layout.done_key(nxt), answered)
    again = stages.label_batch(store, engine, nxt)
    assert again["human"] == 2
    labels = store.read_parquet(layout.labels_key(nxt)).to_pylist()
    by_frame = {r["frame_id"]: r for r in labels}
    for t in queue["tasks"][:2]:
        fid = t["data"]["frame_id"]
        got = [(b["label"], round(b["x"], 1), round(b["w"], 1)) for b in by_frame[fid]["boxes"]]
        assert by_frame[fid]["label_source"] == "human"
        assert got == [(b["label"], round(b["x"], 1), round(b["w"], 1)) for b in truth[fid] or []]
    autos = [r for r in labels if r["label_source"] == "auto"]
    assert again["auto"] == len(autos) and all(r["label_confidence"] >= 0.4 for r in autos if r["boxes"])
    assert again["labeled"] + again["unlabeled"] == frames.num_rows
    # with engine.auto_min_precision, only classes the champion is shown right about on golden frames auto-label
    strict = load_settings(**DETECT, **{"engine.enabled": True, "engine.label_budget": 10, "detection.min_score": 0.01,
                                        "engine.auto_min_precision": 0.0, "engine.auto_min_support": 10**6})  # fmt: skip
    held = stages.label_batch(store, strict, nxt)
    assert held["auto_trust"]["trusted"] == [] and held["auto_trust"]["frames"] > 0
    assert held["auto"] == sum(not r["boxes"] for r in store.read_parquet(layout.labels_key(nxt)).to_pylist()
                               if r["label_source"] == "auto")  # only frames where it sees nothing  # fmt: skip

    # the shadow trigger on the car: a clip is flagged when a frame holds a detection in the unsure band
    session, manifest = deploy.load_deployed(store, settings.mlflow.model_name)
    clip = np.stack([np.full((48, 64, 3), v, np.uint8) for v in (40, 120)])
    scores = [d[1] for dets in session_detect(session, frames_to_input(clip, 48)) for d in dets]
    top = max(scores)
    assert box_shadow_filter(session, manifest, band=(top * 0.5, top + 1e-6))(clip, {}) == "low_confidence"
    assert box_shadow_filter(session, manifest, band=(top + 1e-6, 1.0))(clip, {}) is None
    assert fleet_filter(store, engine) is not None and fleet_filter(store, settings) is None  # engine off: random
    return nxt, strict


def _dets(truth, keep: float, rng, shift: float = 0.0):
    """Detections that find a `keep` share of the true boxes (score 0.9) and a stray box per frame (0.3)."""
    out = []
    for frame in truth:
        found = [(c, 0.9, x + shift, y, w, h) for c, x, y, w, h in frame if rng.random() < keep]
        out.append(found + [(0, 0.3, 1.0, 1.0, 4.0, 4.0)])
    return out


def test_the_gate_on_boxes_promotes_a_shown_gain_and_keeps_a_slice_regression():
    rng = np.random.default_rng(0)
    truth = [[(k % 2, 10.0, 10.0, 12.0, 12.0), (1, 30.0, 5.0, 8.0, 16.0)] for k in range(200)]
    condition = ["day"] * 150 + ["fog"] * 50
    classes = ["car", "person"]
    champ, better = _dets(truth, 0.5, rng), _dets(truth, 0.95, rng)
    settings = GateSettings(min_slice_frames=40, critical_slices=["condition=*"], resamples=200)

    def judge(ch, cp):
        from flywheel.detection.metrics import coco_map

        report = lambda d: {**coco_map(truth, d, classes, slices={"condition": condition}),  # noqa: E731
                            "per_slice": {}}  # fmt: skip
        return decide_boxes(report(ch), report(cp), settings, floor=0.2, truth=truth, ch_dets=ch, champ_dets=cp,
                            slices={"condition": condition}, classes=classes)  # fmt: skip

    up = judge(better, champ)
    assert up.passed and up.details["rule"] == "superior" and up.primary.low > 0
    # better on day, but the fog frames lose their boxes: that slice is shown worse and blocks
    fog_lost = [d if c == "day" else [(0, 0.3, 1.0, 1.0, 4.0, 4.0)] for d, c in zip(better, condition, strict=True)]
    down = judge(fog_lost, champ)
    assert not down.passed and "condition=fog" in [s.slice for s in down.blocking]
    # first model: the floor
    first = decide_boxes({"map50": 0.1, "per_slice": {}}, None, settings, floor=0.2)
    assert not first.passed and "below the floor 0.2000" in first.reason


def test_box_trust_counts_a_class_right_only_where_its_sure_boxes_overlap_true_ones():
    truth = [[(0, 0.0, 0.0, 10.0, 10.0), (1, 20.0, 20.0, 10.0, 10.0)], [(0, 5.0, 5.0, 10.0, 10.0)]]
    dets = [[(0, 0.9, 1.0, 1.0, 10.0, 10.0), (1, 0.8, 0.0, 0.0, 10.0, 10.0), (1, 0.1, 20.0, 20.0, 10.0, 10.0)],
            [(0, 0.7, 5.0, 5.0, 10.0, 10.0), (0, 0.6, 5.0, 5.0, 10.0, 10.0)]]  # the second a duplicate: wrong
    t = box_trust(truth, dets, ["car", "person"], min_score=0.5, min_precision=0.6, min_support=2)
    assert t["per_class"]["car"] == {"confident": 3, "correct": 2, "precision": 2 / 3, "trusted": True}
    assert t["per_class"]["person"] == {"confident": 1, "correct": 0, "precision": 0.0, "trusted": False}
    assert t["trusted"] == [0]


def test_a_dataset_keeps_one_task_and_checks_box_classes(loop):
    settings, store, _ = loop
    batch = _batch(store, settings, clips=4, seed=0)
    stages.label_batch(store, settings, batch)
    stages.augment_batch(store, settings, batch)
    rows = store.read_parquet(layout.augmented_key(batch))
    with pytest.raises(ValueError, match="box classes \\['vehicle'\\] are not among the classes"):
        dataset.append_version(store, name="other", batches={batch: rows}, classes=["pedestrian", "cyclist", "red_light", "obstacle"])
    dataset.append_version(store, name="boxes", batches={batch: rows}, classes=settings.classes)
    classified = rows.drop_columns(["boxes"]).append_column("label", pa.array([0] * rows.num_rows, pa.int32()))
    with pytest.raises(ValueError, match="holds detection rows, these batches are classification rows"):
        dataset.append_version(store, name="boxes", batches={"b2": classified}, classes=settings.classes)


def test_the_deployed_detector_graph_is_checked_against_its_classes():
    model, classes = load_detector(save_detector(CenterNet(DetectorConfig(num_classes=3, image_size=48)), ["a", "b", "c"]))
    onnx_bytes = export_onnx(model)
    assert ort.InferenceSession(onnx_bytes).get_outputs()[0].shape[1] == 3
    with pytest.raises(ValueError, match="expected 4 classes"):
        deploy._check_graph(onnx_bytes, classes=["a", "b", "c", "d"], image_size=48)
    deploy._check_graph(onnx_bytes, classes=classes, image_size=48)


def test_the_yardstick_detector_learns_and_says_when_the_challenger_is_short_or_it_did_not_learn():
    from flywheel.detection.stages import _against_yardstick
    from tests.detection.test_detector import CLASSES, scenes

    images, boxes = scenes(96, seed=0)
    val_images, val_boxes = scenes(40, seed=1)
    cfg = DetectorConfig(num_classes=3, image_size=48)
    settings = load_settings(**{"detection.yardstick_steps": 50, "detection.batch_size": 16, "classes": CLASSES})
    untrained = CenterNet(cfg).eval()
    check = _against_yardstick(settings, untrained, images, boxes, val_images, val_boxes, cfg)
    # coloured rectangles: trained the plain way, the yardstick learns them; an untrained challenger is short
    assert check["yardstick"] > check["untrained"] + 0.1 and check["verdict"] == "short"
    one_step = load_settings(**{"detection.yardstick_steps": 1, "detection.batch_size": 16, "classes": CLASSES})
    assert _against_yardstick(one_step, untrained, images, boxes, val_images, val_boxes, cfg)["verdict"] == "broken"
    off = load_settings(**{"detection.yardstick_steps": 0, "classes": CLASSES})
    assert _against_yardstick(off, untrained, images, boxes, val_images, val_boxes, cfg) is None


def test_tuning_says_it_is_for_the_classifier(loop):
    settings, store, tracker = loop
    from flywheel.training import tune

    with pytest.raises(ValueError, match="with task: detection the detector's recipe is detection: as set"):
        tune.tune(store, settings, tracker)
    assert tune.retune_check(store, settings) == (None, "task: detection: the detector's recipe (detection:) is not tuned")


def test_clips_an_outside_script_wrote_with_boxes_ingest_train_and_score():
    """Clips written with mcap and the Foxglove schemas only (no flywheel code), boxes as ImageAnnotations:
    ingested, labeled by their boxes, versioned, and a detector trained and scored on them."""
    from tests.ingest.test_ingest import DAY, _outside_clip

    settings = load_settings(**DETECT, **{"dataset.split": {"train": 0.5, "val": 0.1, "test": 0.4}})
    store, tracker = open_store(settings.store_root), tracker_for(settings)
    for k in range(12):
        store.write_bytes(f"{DAY}c{k}.mcap", _outside_clip(f"outside-{k}", [(2 + k, 6, 20, 12.5, "vehicle#3"),
                                                                           (30, 2, 8, 30, "pedestrian")]))  # fmt: skip
    plan = ingest.plan_batch(store, min_clips=12, max_clips=100)
    ingest.commit_batch(store, plan)
    assert not ingest.validate_batch(store, plan.batch_id, settings)["quarantined"]
    assert ingest.write_frames(store, plan.batch_id, settings)["with_boxes"] == 12
    stats = stages.label_batch(store, settings, plan.batch_id)
    assert stats["ground_truth"] == 12 and stats["per_class"] == {"pedestrian": 12, "vehicle": 12}
    stages.augment_batch(store, settings, plan.batch_id)
    manifest, _ = stages.build_dataset_version(store, settings)
    stages.train_challenger(store, settings, tracker)
    ev = stages.evaluate_challenger(store, settings, tracker)
    _, test_boxes, _ = data.load_frames(store, manifest, settings.classes, image_size=48, split="test", originals=True)
    assert ev["frames"] >= len(test_boxes) > 0 and ev["challenger"]["boxes"] == 2 * ev["frames"]
    assert 0 <= ev["challenger"]["map50"] <= 1 and set(ev["challenger"]["per_class"]) == set(settings.classes)
    scored = {c for c, v in ev["challenger"]["per_class"].items() if v["map50"] is not None}
    assert scored == {"vehicle", "pedestrian"}  # the classes the clips' boxes name, and only those


def test_two_gloo_ranks_train_the_detector_through_pipes(loop):
    """The challenger asset launches torchrun through Dagster Pipes; with two ranks the detector trains with
    DDP over gloo, rank 0 registers it and its step lines reach the run's log."""
    import dagster as dg

    from flywheel.definitions import build_definitions

    settings, store, tracker = loop
    batch = _batch(store, settings, clips=8, seed=0)
    for stage in (stages.label_batch, stages.augment_batch):
        stage(store, settings, batch)
    stages.build_dataset_version(store, settings)
    overrides = {**DETECT, "compute.nproc_per_node": 2, "detection.steps": 100}
    defs = build_definitions(load_settings(**overrides), overrides=overrides)
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("train_and_deploy").execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("challenger")], raise_on_error=False)  # fmt: skip
        assert result.success
        [m] = result.asset_materializations_for_node("challenger")
        meta = {k: v.value for k, v in m.metadata.items()}
        assert meta["ranks (torchrun)"] == 2 and meta["mlflow_version"] == tracker.alias(CHALLENGER) == "1"
        lines = [e.message for e in instance.all_logs(result.run_id) if e.message]
        assert any("step 100/100: train_loss" in line for line in lines), lines[-20:]
    history = tracker.read_json(tracker.version_run("1"), "history.json")
    assert [h["epoch"] for h in history] == [50, 100]
    assert history[1]["train_loss"] < history[0]["train_loss"]  # the ranks' averaged loss falls: they learn together
    assert tracker.run_tags(tracker.version_run("1"))["task"] == "detection"


def test_a_classifier_champion_under_the_same_model_name_is_refused_by_name(loop):
    from flywheel.model import ModelConfig, build_model, save_weights

    settings, store, tracker = loop
    batch = _batch(store, settings, clips=8, seed=0)
    for stage in (stages.label_batch, stages.augment_batch):
        stage(store, settings, batch)
    stages.build_dataset_version(store, settings)
    with tracker.run("a classifier", tags={}) as run_id:
        cfg = ModelConfig(num_classes=len(settings.classes), image_size=48)
        classifier = save_weights(build_model(cfg), cfg, settings.classes)
        tracker.set_alias(CHAMPION, tracker.register(run_id, classifier))
    stages.train_challenger(store, settings, tracker)
    with pytest.raises(ValueError, match="v1 is a frame classifier, not a detector: with task: detection use another"):
        stages.evaluate_challenger(store, settings, tracker)


def test_a_bad_detection_setting_is_named():
    from flywheel.config import ConfigError

    with pytest.raises((ValueError, ConfigError), match="unsure band is \\[low, high\\)"):
        load_settings(**{"detection.unsure_band": (0.5, 0.2)})
    with pytest.raises((ValueError, ConfigError), match="multiple of 8"):
        load_settings(**{"task": "detection", "image_size": 60})
