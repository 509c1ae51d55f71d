"""The sensors after a run: training starts once enough new labeled frames wait after an ingest, and
a failed run leaves one alert line that names its job, its failed step and the error."""

from __future__ import annotations

import dagster as dg
import pytest

from flywheel import layout, stages
from flywheel.store import open_store
from resources import SettingsResource, StoreResource
from sensors.training import report_failed_runs, train_after_ingest
from tests.frames import batch_in_store, frames_table


def _resources(root: str, **overrides: str) -> dict:
    settings = SettingsResource(overrides={"store.root": root, **overrides})
    return {"settings": settings, "store": StoreResource(settings=settings)}


@dg.op
def ingest_step():
    return 1


@dg.job(name="ingest_batch")
def ingest_run():
    """A successful run of a job named as the ingest job, for the run-status sensor to look at."""
    ingest_step()


def _labeled_batch(store, settings, batch_id: str, frames: int) -> None:
    """A committed batch whose labels and augmented rows are written: what a finished ingest leaves."""
    store.write_json(
        layout.batch_key(batch_id),
        {"batch_id": batch_id, "created_at": f"2026-01-01T00:00:0{batch_id[-1]}Z", "clips": []},
    )
    batch_in_store(store, frames_table(frames, batch=batch_id), batch_id)
    stages.label_batch(store, settings, batch_id)
    stages.augment_batch(store, settings, batch_id)


def _after_ingest(instance, resources):
    result = ingest_run.execute_in_process(instance=instance)
    success = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_SUCCESS)
    with dg.build_run_status_sensor_context(
        sensor_name="train_after_ingest",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=success,
        resources=resources,
    ) as context:
        return result.dagster_run, train_after_ingest(context)


@pytest.mark.parametrize("sensor_min", ["20", "100"])
def test_training_starts_after_an_ingest_once_enough_labeled_frames_wait(tmp_path, sensor_min):
    root = str(tmp_path / "store")
    resources = _resources(root, **{"sensor.min_new_frames": sensor_min})
    store, settings = open_store(root), resources["settings"].load()
    with dg.instance_for_test() as instance:
        _, nothing = _after_ingest(instance, resources)
        assert isinstance(nothing, dg.SkipReason) and nothing.skip_message.startswith(
            "0 new labeled frame(s) wait"
        )
        _labeled_batch(store, settings, "b1", 24)
        _labeled_batch(store, settings, "b2", 24)
        run, request = _after_ingest(instance, resources)
    if sensor_min == "100":  # 48 wait: not yet, and it says how many wait against how many it needs
        assert isinstance(request, dg.SkipReason)
        assert request.skip_message == "48 new labeled frame(s) wait; training needs 100"
        return
    assert isinstance(request, dg.RunRequest)
    assert (
        request.run_key == f"after-ingest-{run.run_id}"
    )  # one training per finished ingest, never two
    assert (
        request.tags["flywheel/new_frames"] == "48" and request.tags["flywheel/batches"] == "b1,b2"
    )


@dg.op
def train_step():
    raise ConnectionError("the tracking server went away")


@dg.job(name="train_and_deploy")
def failing_training():
    train_step()


def test_a_failed_run_leaves_one_alert_line_naming_job_step_and_error(capfd):
    with dg.instance_for_test() as instance:
        result = failing_training.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        failure = next(
            e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE
        )
        context = dg.build_run_status_sensor_context(
            sensor_name="report_failed_runs",
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            dagster_event=failure,
        ).for_run_failure()
        capfd.readouterr()  # the run's own log lines
        report_failed_runs(context)
    alerts = [
        line.partition(" - ERROR - ")[2]
        for line in capfd.readouterr().err.splitlines()
        if "FLYWHEEL ALERT" in line
    ]
    assert len(alerts) == 1
    assert alerts[0] == (
        f"FLYWHEEL ALERT: run {result.run_id} of job train_and_deploy failed in train_step: "
        "ConnectionError: the tracking server went away"
    )  # the step's own error, not "steps failed"
