"""The whole graph, materialized in a temporary instance, and the loop's stage functions."""

from collections import Counter

import dagster as dg
import mlflow
import numpy as np
import pytest
import torch

from flywheel import layout, stages
from flywheel.cli.driver import format_summary
from flywheel.config import load_settings
from flywheel.data import dataset
from flywheel.data.reader import load_arrays
from flywheel.definitions import build_definitions
from flywheel.deployment import champion, deploy
from flywheel.evaluation import approvals, evalset
from flywheel.evaluation.evaluate import score
from flywheel.ingest import commit_batch, plan_batch
from flywheel.labeling.queue import human_labels_spent
from flywheel.model import load_weights
from flywheel.predict import predict
from flywheel.report import champion_status, iteration_summary
from flywheel.sim import simulate
from flywheel.sim.annotator import answer_queue
from flywheel.store import open_store
from flywheel.tracking import CHALLENGER, CHAMPION, tracker_for

TINY = {
    "sim.frames_per_clip": 4, "image_size": 32, "train.epochs": 1, "train.width": 8, "train.depth": 1,
    "train.batch_size": 32, "gate.floor": 0.0, "gate.min_slice_frames": 1000, "dataset.golden_size": 10,
}  # fmt: skip


def _ingest_new_batch(store, settings, instance, defs, seed, *, annotate=False):
    simulate(store, settings, clips=12, seed=seed)
    plan = plan_batch(store, min_clips=1, max_clips=100)
    commit_batch(store, plan)
    instance.add_dynamic_partitions("fleet_batches", [plan.batch_id])
    job = defs.resolve_job_def("ingest_batch")
    assert job.execute_in_process(instance=instance, partition_key=plan.batch_id).success
    if annotate:  # the labeling team answers the queue from outside; the batch's labels are made again
        assert answer_queue(store, classes=settings.classes)["answered_batches"] == [plan.batch_id]
        again = [dg.AssetKey("labels"), dg.AssetKey("augmented")]
        assert job.execute_in_process(instance=instance, partition_key=plan.batch_id, asset_selection=again).success
    return plan.batch_id


@pytest.mark.slow
def test_two_iterations_materialize_the_whole_graph(flywheel_home, monkeypatch):
    settings = load_settings(**TINY)
    store = open_store(settings.store_root)
    defs = build_definitions(settings, overrides=TINY)
    with dg.instance_for_test() as instance:
        _ingest_new_batch(store, settings, instance, defs, seed=1)
        first = defs.resolve_job_def("train_and_deploy").execute_in_process(instance=instance)
        assert first.success
        tracker = tracker_for(settings)
        assert tracker.alias(CHALLENGER) == tracker.alias(CHAMPION) == "1"
        assert deploy.current(store, settings.mlflow.model_name)["version"] == "v1"
        # an int8 graph beside the fp32 one, checked on the frames the gate judged on and timed
        published = store.read_json(layout.deploy_manifest_key(settings.mlflow.model_name, "v1"))
        int8 = published["int8"]
        judged = store.read_json(layout.evaluation_key(settings.mlflow.model_name, "1"))["frames"]
        assert int8["check"]["frames"] == judged > 0 and (store.exists(int8["key"]) if int8["check"]["passed"] else int8["key"] is None)
        assert published["serve"] == ("int8" if int8["check"]["passed"] else "fp32")
        assert set(published["latency_ms"]) == {"fp32", "int8"}
        checks = [e.event_specific_data for e in first.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert [c.passed for c in checks] == [True]

        assert instance.get_run_by_id(first.run_id).tags["flywheel/gate"] == "promoted"
        # MLflow and Dagster link: the training run names the Dagster run, and its name the versions
        trained = tracker.client.get_run(tracker.version_run("1"))
        assert trained.data.tags["dagster.run_id"] == first.run_id
        assert trained.info.run_name == f"{settings.mlflow.model_name} v1 on {settings.dataset.name} v1"
        # the registered model serves as MLflow users expect, the ONNX beside it
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.tracking_uri)  # as a user points MLflow at it
        served = mlflow.pyfunc.load_model(f"models:/{settings.mlflow.model_name}@champion")
        frames = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), np.uint8)
        model, _ = load_weights(tracker.weights("1"))
        with torch.no_grad():
            assert np.allclose(served.predict(frames), model(torch.from_numpy(frames)).numpy(), atol=1e-4)
        model_files = {a.path for a in tracker.client.list_artifacts(tracker.version_run("1"), "model")}
        assert {"model/MLmodel", "model/weights.pt", "model/model.onnx"} <= model_files
        described = tracker.client.get_model_version(settings.mlflow.model_name, "1").description
        assert described.startswith(f"Trained on {settings.dataset.name} v1") and "Gate passed" in described
        logs = [e.message for e in instance.all_logs(first.run_id)]
        assert any(m.startswith("epoch 1/1: train_loss ") and "images/s" in m for m in logs)  # per-epoch lines
        # what the model looks at, in the UI and beside the run
        evaluated = instance.get_latest_materialization_event(dg.AssetKey("evaluation")).asset_materialization
        assert evaluated.metadata["saliency"].value.startswith("![saliency](data:image/png;base64,")
        # 48 frames hold too few labeled test frames for a fixed held-out set: said so, and no score
        no_fixed = store.read_json(layout.evaluation_key(settings.mlflow.model_name, "1"))["fixed_set"]
        assert no_fixed["frames"] is None and no_fixed["challenger"] is None and no_fixed["champion"] is None
        assert no_fixed["note"].startswith("no fixed set yet") and not store.exists(layout.fixed_set_key(settings.dataset.name))
        assert "no fixed set yet" in evaluated.metadata["growing evaluation set vs fixed held-out set"].value
        artifacts = {a.path for a in tracker.client.list_artifacts(trained.info.run_id, "plots")}
        assert "plots/saliency.png" in artifacts
        experiment = tracker.client.get_experiment(tracker.experiment_id)
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI view

        # a second batch makes v2 of the dataset, reusing v1's shards; a challenger that cannot beat the
        # champion by the margin is kept out: a successful run with that outcome, not a failure
        _ingest_new_batch(store, settings, instance, defs, seed=2)
        least = len(evalset.labeled_test_frames(store, dataset.load_manifest(store, settings.dataset.name, 1))) + 1
        strict = build_definitions(settings, overrides={**TINY, "gate.margin": 1.0, "eval.fixed_set_min_frames": least})
        second = strict.resolve_job_def("train_and_deploy").execute_in_process(instance=instance)
        assert second.success and instance.get_run_by_id(second.run_id).tags["flywheel/gate"] == "kept"
        manifest = dataset.load_manifest(store, settings.dataset.name)
        assert manifest["version"] == 2 and manifest["parent"] == 1
        v1 = dataset.load_manifest(store, settings.dataset.name, 1)
        assert {s["path"] for s in v1["shards"]} < {s["path"] for s in manifest["shards"]}
        assert tracker.alias(CHALLENGER) == "2" and tracker.alias(CHAMPION) == "1"
        summary = iteration_summary(store, settings, tracker)
        assert summary["dataset_version"] == 2 and summary["champion_version"] == "1" and not summary["gate_passed"]
        # the turn's yardstick check, read back for v2: its verdict and its cost beside the training's
        check = store.read_json(layout.baseline_check_key(settings.dataset.name))
        assert check["model_version"] == "2" and summary["yardstick"]["verdict"] == check["verdict"]
        assert summary["yardstick"]["share_of_training"] == check["share_of_training"] > 0
        assert "yardstick CNN on val: " + check["verdict"] in format_summary(summary)
        # v2 is the first version with `least` labeled test frames: the fixed set is frozen from it, and
        # challenger and champion are both scored on those frames, read back by frame id
        fixed = store.read_json(layout.evaluation_key(settings.mlflow.model_name, "2"))["fixed_set"]
        frozen = store.read_json(layout.fixed_set_key(settings.dataset.name))
        assert fixed["dataset_version"] == frozen["dataset_version"] == 2 and fixed["frames"] == frozen["frames"] >= least
        images, labels, _ = load_arrays(store, manifest, frame_ids=frozen["frame_ids"], image_size=settings.image_size)
        for role, version in (("challenger", "2"), ("champion", "1")):
            model, _ = load_weights(tracker.weights(version))
            expected = score(predict(model, images).probs, labels, classes=settings.classes)
            assert fixed[role]["n"] == len(labels) and fixed[role]["macro_f1"] == pytest.approx(expected["macro_f1"])
        assert summary["fixed_challenger"] == fixed["challenger"]["macro_f1"]
        assert summary["fixed_deployed"] == summary["fixed_champion"] == fixed["champion"]["macro_f1"]  # v1 was kept
        assert tracker.client.get_run(tracker.version_run("2")).data.metrics["fixed/macro_f1"] == pytest.approx(
            fixed["challenger"]["macro_f1"])  # fmt: skip
        evaluated = instance.get_latest_materialization_event(dg.AssetKey("evaluation")).asset_materialization
        assert evaluated.metadata["fixed held-out set macro_f1"].value == pytest.approx(fixed["challenger"]["macro_f1"])
        assert "fixed held-out set (frozen from v2)" in evaluated.metadata["growing evaluation set vs fixed held-out set"].value
        materialized = {e.asset_key.path[-1] for e in second.get_asset_materialization_events()}
        assert "evaluation" in materialized and "deployed" not in materialized
        logs = [e.message for e in instance.all_logs(second.run_id)]
        assert any("the champion is kept" in m and "the gain does not clear the margin" in m for m in logs)
        balance = instance.get_latest_materialization_event(dg.AssetKey("augmented")).asset_materialization
        table = balance.metadata["balance (train rows per label, condition)"].value
        assert any(f"| {c} | " in table for c in settings.classes)  # class names, not indices
        mats = instance.get_latest_materialization_event(dg.AssetKey("training_dataset"))
        meta = mats.asset_materialization.metadata
        assert meta["version"].value == 2
        # what v2 adds to v1, in the UI: the second batch's 12 clips, no label changed
        assert (meta["clips_added"].value, meta["labels_changed"].value) == (12, 0)
        assert "**perception v1 → v2**" in meta["vs_parent"].value


@pytest.mark.slow
def test_a_force_deploys_the_one_version_it_names_and_records_the_account(flywheel_home):
    strict = {**TINY, "gate.floor": 1.0}  # no model reaches it: the gate keeps every challenger
    settings = load_settings(**strict)
    store = open_store(settings.store_root)
    defs = build_definitions(settings, overrides=strict)
    job = defs.resolve_job_def("train_and_deploy")
    tracker = tracker_for(settings)
    with dg.instance_for_test() as instance:
        _ingest_new_batch(store, settings, instance, defs, seed=1)
        kept = job.execute_in_process(instance=instance)
        assert kept.success and instance.get_run_by_id(kept.run_id).tags["flywheel/gate"] == "kept"
        with pytest.raises(ValueError, match="v2 is not the current challenger"):
            approvals.force(store, settings, tracker, "v2", reason="hotfix")
        with pytest.raises(ValueError, match="needs why"):
            approvals.force(store, settings, tracker, "v1", reason=" ")
        record = approvals.force(store, settings, tracker, "v1", reason="hotfix for a sensor change")
        assert record["account"] == approvals.identity()["account"] and record["weights_sha256"]
        assert "below the floor" in record["gate_reason"]
        deployed = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("deployed")])
        assert deployed.success and tracker.alias(CHAMPION) == "1"
        # the next challenger faces the gate as usual: the force named v1 only
        _ingest_new_batch(store, settings, instance, defs, seed=2)
        assert job.execute_in_process(instance=instance).success
        assert tracker.alias(CHALLENGER) == "2" and tracker.alias(CHAMPION) == "1"
        assert approvals.held_back(store, settings, tracker)[0] == "kept"
        approvals.force(store, settings, tracker, "v2", reason="second hotfix")
        assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("deployed")]).success
    cur = deploy.current(store, settings.mlflow.model_name)
    manifest = store.read_json(cur["manifest"])
    assert cur["version"] == "v2" and manifest["forced_by"]["who"] == approvals.identity()["account"]
    assert manifest["forced_by"]["why"] == "second hotfix"
    assert tracker.client.get_run(tracker.version_run("2")).data.tags["forced_by"] == approvals.identity()["account"]
    assert champion.rollback(store, settings, tracker) == ("v2", "v1")
    assert tracker.alias(CHAMPION) == "1"
    assert champion_status(store, settings)["version"] == "v1"
    with pytest.raises(deploy.RollbackError):
        champion.rollback(store, settings, tracker)


def test_engine_labels_through_the_queue_only(flywheel_home):
    """Engine on: labels come from the Label Studio queue (simulated annotator) and the champion, never the clips."""
    # 40 of each batch's 48 frames go to humans; with 40 % of the clips in test, labeled test frames exist.
    engine = {**TINY, "engine.enabled": True, "engine.label_budget": 40,
              "engine.auto_threshold": 1.0, "dataset.split": {"train": 0.5, "val": 0.1, "test": 0.4}}  # fmt: skip
    settings = load_settings(**engine)
    store = open_store(settings.store_root)
    defs = build_definitions(settings, overrides=engine)
    with dg.instance_for_test() as instance:
        first = _ingest_new_batch(store, settings, instance, defs, seed=1, annotate=True)
        labels = store.read_parquet(layout.labels_key(first))
        # no champion yet: only the 40 queued frames are labeled, by the (simulated) humans
        assert labels.num_rows == 40 and set(labels.column("label_source").to_pylist()) == {"human"}
        assert store.exists(layout.queue_key(first)) and store.exists(layout.done_key(first))
        assert defs.resolve_job_def("train_and_deploy").execute_in_process(instance=instance).success
        second = _ingest_new_batch(store, settings, instance, defs, seed=2, annotate=True)
        labels = store.read_parquet(layout.labels_key(second))
        sources = labels.column("label_source").to_pylist()
        # the champion is never sure enough (threshold 1.0): 40 frames go to humans, the rest stay unlabeled,
        # and the clips' ground truth does not fill the gap
        assert sources == ["human"] * 40
        queue = store.read_json(layout.queue_key(second))
        assert all(t["predictions"][0]["model_version"] == "v1" for t in queue)  # pre-filled by the champion
        # the champion scored the batch on the compute device, as far as this onnxruntime reaches
        mat = instance.get_latest_materialization_event(dg.AssetKey("labels")).asset_materialization
        assert mat.partition == second
        assert mat.metadata["champion scored on"].value == deploy.providers(settings.train.device)[0]
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("labels"), "likely_label_errors")]
        )
        assert check  # the non-blocking label-error check ran
        # the engine's synthetic frames of scarce conditions (engine.synthesize_share, on by default), in the UI
        rows = store.read_parquet(layout.augmented_key(second))
        made = Counter(c for c, a in zip(rows.column("condition").to_pylist(), rows.column("augmentation").to_pylist(),
                                         strict=True) if a.startswith("synth-"))  # fmt: skip
        assert made and set(made) <= {"fog", "night", "rain"}
        shown = instance.get_latest_materialization_event(dg.AssetKey("augmented")).asset_materialization
        assert shown.metadata["synthesized (frames per condition)"].value == ", ".join(f"{c} {n}" for c, n in made.items())
    assert human_labels_spent(store) == 80
    # Auto labels only for classes whose sure guesses on the golden set were right (labeling/trust.py): the
    # 8 frames people did not label, labeled again with every guess "sure" and a gate of 100 % precision
    for need in (1.0, 0.0):
        gated = load_settings(**{**engine, "engine.auto_threshold": 0.0, "engine.auto_min_precision": need,
                                 "engine.auto_min_support": 1})  # fmt: skip
        stats = stages.label_batch(store, gated, second)
        trust, labels = stats["auto_trust"], store.read_parquet(layout.labels_key(second))
        assert 0 < trust["frames"] <= 10 and set(trust["per_class"]) == set(settings.classes)
        shown = [k for k, c in enumerate(settings.classes) if trust["per_class"][c]["confident"]
                 and trust["per_class"][c]["correct"] >= need * trust["per_class"][c]["confident"]]  # fmt: skip
        assert trust["trusted"] == shown
        autos = [lab for lab, s in zip(labels.column("label").to_pylist(), labels.column("label_source").to_pylist(),
                                       strict=True) if s == "auto"]  # fmt: skip
        assert set(autos) <= set(shown) and labels.num_rows == 40 + len(autos) <= 48
        if need == 0.0:  # every class shown at all is trusted: each unlabeled frame guessed as one gets its label
            assert len(autos) == stats["auto"] > 0


def test_no_new_data_keeps_the_challenger_instead_of_training_a_copy(flywheel_home):
    settings = load_settings(**TINY)
    store = open_store(settings.store_root)
    defs = build_definitions(settings, overrides=TINY)
    with dg.instance_for_test() as instance:
        _ingest_new_batch(store, settings, instance, defs, seed=1)
        job = defs.resolve_job_def("train_and_deploy")
        assert job.execute_in_process(instance=instance).success
        tracker = tracker_for(settings)
        versions = len(tracker.client.search_model_versions(f"name='{settings.mlflow.model_name}'"))
        again = job.execute_in_process(instance=instance)
        assert again.success
        assert len(tracker.client.search_model_versions(f"name='{settings.mlflow.model_name}'")) == versions
        mat = instance.get_latest_materialization_event(dg.AssetKey("challenger")).asset_materialization
        assert mat.metadata["up_to_date (no new data: kept, not retrained)"].value is True
        assert mat.metadata["ranks (torchrun)"].value == "none (kept)"  # no training process was launched
        assert not [e for e in instance.all_logs(again.run_id) if "external process" in (e.user_message or "")]
        assert deploy.current(store, settings.mlflow.model_name)["version"] == "v1"
        # an int8 graph beside the fp32 one, checked on the same test frames and timed
        published = store.read_json(layout.deploy_manifest_key(settings.mlflow.model_name, "v1"))
        int8 = published["int8"]
        assert int8["check"]["frames"] > 0 and (store.exists(int8["key"]) if int8["check"]["passed"] else int8["key"] is None)
        assert published["serve"] == ("int8" if int8["check"]["passed"] else "fp32")
        assert set(published["latency_ms"]) == {"fp32", "int8"}


def test_a_required_approval_holds_the_deploy_until_a_person_approves(flywheel_home):
    needs = {**TINY, "gate.require_approval": True}
    settings = load_settings(**needs)
    store = open_store(settings.store_root)
    defs = build_definitions(settings, overrides=needs)
    job = defs.resolve_job_def("train_and_deploy")
    with dg.instance_for_test() as instance:
        _ingest_new_batch(store, settings, instance, defs, seed=1)
        waiting = job.execute_in_process(instance=instance)
        assert waiting.success and instance.get_run_by_id(waiting.run_id).tags["flywheel/gate"] == "awaiting-approval"
        tracker = tracker_for(settings)
        assert tracker.alias(CHAMPION) is None and deploy.current(store, settings.mlflow.model_name) is None
        assert "deployed" not in {e.asset_key.path[-1] for e in waiting.get_asset_materialization_events()}
        logs = [e.message for e in instance.all_logs(waiting.run_id)]
        assert any("waits for approval" in m and "flywheel approve v1" in m for m in logs)
        with pytest.raises(ValueError, match="v2 is not the current challenger"):
            approvals.approve(store, settings, tracker, "v2", by="alice", reason="looks fine")
        # approved from the UI (or `flywheel approve`): the deployed asset with the approval as config
        config = {"ops": {"deployed": {"config": {"approve_version": "1", "approved_by": "alice",
                                                  "reason": "checked the fog frames"}}}}  # fmt: skip
        approved = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("deployed")], run_config=config)
        assert approved.success and tracker.alias(CHAMPION) == "1"
    manifest = store.read_json(layout.deploy_manifest_key(settings.mlflow.model_name, "v1"))
    assert manifest["approval"]["by"] == "alice" and manifest["approval"]["reason"] == "checked the fog frames"
    # beside the stated name, the account and host the system knows, and the run it came through
    assert manifest["approval"]["account"] == approvals.identity()["account"] and manifest["approval"]["host"]
    assert manifest["approval"]["via"] == f"dagster run {approved.run_id}"
