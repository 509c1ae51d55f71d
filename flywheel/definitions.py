"""Builds the Dagster `Definitions` of the flywheel (entry point for `dagster dev -m flywheel.definitions`)."""

from __future__ import annotations

import os

import dagster as dg

from flywheel.config import Settings, load_settings, quiet_telemetry

quiet_telemetry()

# Runs launched from the UI or by sensors: each step in a process of its own (Dagster's multiprocess executor),
# forked from a server that imported this code location and the stages (torch, MLflow, albumentations) once per
# run, not spawned to import them again (seconds per step). The code location itself leaves those to the steps
# that use them (flywheel/lazy.py): the webserver, the daemon, sensors and the command line start without them.
# Runs of the command line execute in its process and are not affected.
STEP_EXECUTOR = dg.multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": [__name__, "flywheel.stages"]}}},
    name="multiprocess_forkserver")


def build_definitions(
    settings: Settings | None = None, *, config_path: str | None = None, overrides: dict | None = None,
    executor: dg.ExecutorDefinition = STEP_EXECUTOR,
) -> dg.Definitions:
    from assets import campaigns, dataset, ingest, model
    from jobs import (
        ingest_batch,
        mine,
        nightly_schedule,
        relabel_batch,
        train_and_deploy,
        tune_job,
        tune_schedule,
    )
    from resources import resources_for
    from sensors.fresh_data import fresh_fleet_data
    from sensors.labeling import label_studio_answers
    from sensors.training import report_failed_runs, train_after_ingest
    from sensors.tune import retune_on_new_inputs

    overrides = overrides or {}
    settings = settings or load_settings(config_path, **overrides)
    return dg.Definitions(
        assets=dg.load_assets_from_modules([ingest, dataset, model, campaigns]),
        jobs=[ingest_batch, relabel_batch, train_and_deploy, tune_job, mine],
        schedules=[nightly_schedule(settings.sensor.nightly_cron), tune_schedule(settings.tune.cron)],
        sensors=[fresh_fleet_data, train_after_ingest, report_failed_runs, retune_on_new_inputs,
                 label_studio_answers],
        resources=resources_for(config_path, overrides),
        executor=executor,
    )


defs = build_definitions(config_path=os.environ.get("FLYWHEEL_CONFIG"))
