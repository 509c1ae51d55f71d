"""Sensors that start training after ingest, and report failed runs."""

import dagster as dg

from flywheel.data import dataset
from jobs import TRAINING_TAGS, ingest_batch, train_and_deploy
from resources import SettingsResource, StoreResource


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[ingest_batch],
    request_job=train_and_deploy,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a successful ingest, trains when enough new labeled frames wait.",
)
def train_after_ingest(context: dg.RunStatusSensorContext, settings: SettingsResource, store: StoreResource):
    s = settings.load()
    waiting, batches = dataset.waiting_batches(store.open(), s.dataset.name)
    if waiting < s.sensor.min_new_frames:
        return dg.SkipReason(f"{waiting} new labeled frame(s) wait; training needs {s.sensor.min_new_frames}")
    return dg.RunRequest(
        run_key=f"after-ingest-{context.dagster_run.run_id}",
        tags={**TRAINING_TAGS, "flywheel/new_frames": str(waiting), "flywheel/batches": ",".join(batches)[:200]},
    )


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING,
                       description="Logs an alert line per failed run (a kept champion is a successful run).")
def report_failed_runs(context: dg.RunFailureSensorContext):
    run = context.dagster_run
    failures = context.get_step_failure_events()
    steps = ", ".join(sorted({e.step_key for e in failures if e.step_key})) or "run setup"
    # the first failed step's own error says what went wrong; the run's message only that steps failed
    errors = [e.step_failure_data.error for e in failures if e.step_failure_data.error is not None]
    cause = _first_line(_root(errors[0])) if errors else context.failure_event.message
    context.log.error(f"FLYWHEEL ALERT: run {run.run_id} of job {run.job_name} failed in {steps}: {cause}")


def _root(error):
    """The innermost cause of a serialized error (Dagster wraps the op's exception in its own)."""
    while error.cause is not None:
        error = error.cause
    return error


def _first_line(error) -> str:
    return f"{error.cls_name}: {(error.message.strip().splitlines() or [''])[0].removeprefix(error.cls_name + ': ')}"
