"""The whole graph, materialized in a temporary instance, and the loop's stage functions."""

import dagster as dg
import pytest

from flywheel import deploy, loop
from flywheel.config import load_settings
from flywheel.definitions import build_definitions
from flywheel.ingest import commit_batch, plan_batch
from flywheel.sim import simulate
from flywheel.store import open_store
from flywheel.tracking import CHALLENGER, CHAMPION

TINY = {
    "sim.frames_per_clip": 4, "image_size": 32, "train.epochs": 1, "train.width": 8, "train.depth": 1,
    "train.batch_size": 32, "gate.floor": 0.0, "gate.min_slice_frames": 1000, "dataset.golden_size": 10,
}  # fmt: skip


def _ingest_new_batch(store, settings, instance, defs, seed):
    simulate(store, settings, clips=12, seed=seed)
    plan = plan_batch(store, min_clips=1, max_clips=100)
    commit_batch(store, plan)
    instance.add_dynamic_partitions("fleet_batches", [plan.batch_id])
    res = defs.resolve_job_def("ingest_batch").execute_in_process(instance=instance, partition_key=plan.batch_id)
    assert res.success
    return plan.batch_id


def test_two_iterations_materialize_the_whole_graph(flywheel_home):
    settings = load_settings(**TINY)
    store = open_store(settings.store_root)
    defs = build_definitions(settings, overrides=TINY)
    with dg.instance_for_test() as instance:
        _ingest_new_batch(store, settings, instance, defs, seed=1)
        first = defs.resolve_job_def("train_and_deploy").execute_in_process(instance=instance)
        assert first.success
        tracker = loop.tracker_for(settings)
        assert tracker.alias(CHALLENGER) == tracker.alias(CHAMPION) == "1"
        assert deploy.current(store, settings.mlflow.model_name)["version"] == "v1"
        checks = [e.event_specific_data for e in first.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert [c.passed for c in checks] == [True]

        # a second batch makes v2 of the dataset, reusing v1's shards
        _ingest_new_batch(store, settings, instance, defs, seed=2)
        second = defs.resolve_job_def("train_and_deploy").execute_in_process(instance=instance, raise_on_error=False)
        manifest = loop.dataset.load_manifest(store, settings.dataset.name)
        assert manifest["version"] == 2 and manifest["parent"] == 1
        v1 = loop.dataset.load_manifest(store, settings.dataset.name, 1)
        assert {s["path"] for s in v1["shards"]} < {s["path"] for s in manifest["shards"]}
        assert tracker.alias(CHALLENGER) == "2"
        summary = loop.iteration_summary(store, settings, tracker)
        assert summary["dataset_version"] == 2 and summary["champion_version"] == "1"
        if second.success:  # gate passed: v2 deployed
            assert summary["gate_passed"] and tracker.alias(CHAMPION) == "2"
        else:  # a failed gate is a normal outcome: only the gate step failed, the champion stays
            failed = {e.step_key for e in second.all_events if e.event_type_value == "STEP_FAILURE"}
            assert failed == {"evaluation"} and not summary["gate_passed"]
            assert tracker.alias(CHAMPION) == "1"
        mats = instance.get_latest_materialization_event(dg.AssetKey("training_dataset"))
        assert mats.asset_materialization.metadata["version"].value == 2


def test_forced_promotion_and_rollback(flywheel_home):
    forced = {**TINY, "gate.floor": 1.0, "gate.force": True, "gate.force_reason": "alice: hotfix for a sensor change"}
    settings = load_settings(**forced)
    store = open_store(settings.store_root)
    defs = build_definitions(settings, overrides=forced)
    with dg.instance_for_test() as instance:
        for seed in (1, 2):
            _ingest_new_batch(store, settings, instance, defs, seed=seed)
            assert defs.resolve_job_def("train_and_deploy").execute_in_process(instance=instance).success
    tracker = loop.tracker_for(settings)
    cur = deploy.current(store, settings.mlflow.model_name)
    manifest = store.read_json(cur["manifest"])
    assert cur["version"] == "v2" and manifest["forced_by"] == {"who": "alice", "why": forced["gate.force_reason"]}
    assert tracker.client.get_run(tracker.version_run("2")).data.tags["forced_by"] == "alice"
    assert loop.rollback_champion(store, settings, tracker) == ("v2", "v1")
    assert tracker.alias(CHAMPION) == "1"
    assert loop.champion_status(store, settings)["version"] == "v1"
    with pytest.raises(deploy.RollbackError):
        loop.rollback_champion(store, settings, tracker)


def test_engine_labels_through_the_queue_only(flywheel_home):
    """Engine on: labels come from the Label Studio queue (simulated annotator) and the champion, never the clips."""
    # 40 of each batch's 48 frames go to humans; with 40 % of the clips in test, labeled test frames exist.
    engine = {**TINY, "engine.enabled": True, "engine.simulated_annotator": True, "engine.label_budget": 40,
              "engine.auto_threshold": 1.0, "dataset.split": {"train": 0.5, "val": 0.1, "test": 0.4}}  # fmt: skip
    settings = load_settings(**engine)
    store = open_store(settings.store_root)
    defs = build_definitions(settings, overrides=engine)
    with dg.instance_for_test() as instance:
        first = _ingest_new_batch(store, settings, instance, defs, seed=1)
        labels = store.read_parquet(loop.labels_key(first))
        # no champion yet: only the 40 queued frames are labeled, by the (simulated) humans
        assert labels.num_rows == 40 and set(labels.column("label_source").to_pylist()) == {"human"}
        assert store.exists(f"labeling/queue/{first}.json") and store.exists(f"labeling/done/{first}.json")
        assert defs.resolve_job_def("train_and_deploy").execute_in_process(instance=instance).success
        second = _ingest_new_batch(store, settings, instance, defs, seed=2)
        labels = store.read_parquet(loop.labels_key(second))
        sources = labels.column("label_source").to_pylist()
        # the champion is never sure enough (threshold 1.0): 40 frames go to humans, the rest stay unlabeled,
        # and the clips' ground truth does not fill the gap
        assert sources == ["human"] * 40
        queue = store.read_json(f"labeling/queue/{second}.json")
        assert all(t["predictions"][0]["model_version"] == "v1" for t in queue)  # pre-filled by the champion
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("labels"), "likely_label_errors")]
        )
        assert check  # the non-blocking label-error check ran
    assert loop.human_labels_spent(store) == 80
