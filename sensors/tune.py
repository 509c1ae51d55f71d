"""The sensor that retunes the trainer's recipe when it falls short of the yardstick CNN or what it
was tuned for changed."""

import dagster as dg

from flywheel import lazy
from jobs import TRAINING_TAGS, tune_job
from resources import SettingsResource, StoreResource

tune = lazy.module("flywheel.training.tune")  # torch and optuna, when a tick reads it


@dg.sensor(
    job=tune_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a tune run when the newest challenger scored below the yardstick CNN on "
    "val, or when the class list or image size changed since the last tuned config (a tuned config "
    "applies only to the class list and image size it was tuned for).",
)
def retune_on_new_inputs(
    context: dg.SensorEvaluationContext, settings: SettingsResource, store: StoreResource
) -> dg.RunRequest | dg.SkipReason:
    change, why = tune.retune_check(store.open(), settings.load())
    if change is None:
        return dg.SkipReason(why)
    context.log.info(f"requesting a tune run: {why}")
    # One run per change: every tick until a tune run replaces the config names the same change.
    trigger = "short-of-baseline" if ":short-of-baseline:" in change else "inputs-changed"
    return dg.RunRequest(run_key=change, tags={**TRAINING_TAGS, "flywheel/trigger": trigger})
