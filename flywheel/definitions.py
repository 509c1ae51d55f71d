"""Builds the Dagster `Definitions` of the flywheel (entry point for `dagster dev -m flywheel.definitions`)."""

from __future__ import annotations

import os

import dagster as dg

from flywheel.config import Settings, load_settings, quiet_telemetry

quiet_telemetry()


def build_definitions(
    settings: Settings | None = None, *, config_path: str | None = None, overrides: dict | None = None
) -> dg.Definitions:
    from assets import ingest as ingest_assets
    from assets.resources import resources_for
    from jobs import ingest_batch
    from sensors.fresh_data import fresh_fleet_data

    overrides = overrides or {}
    settings = settings or load_settings(config_path, **overrides)
    return dg.Definitions(
        assets=dg.load_assets_from_modules([ingest_assets]),
        jobs=[ingest_batch],
        sensors=[fresh_fleet_data],
        resources=resources_for(settings, config_path, overrides),
    )


defs = build_definitions(config_path=os.environ.get("FLYWHEEL_CONFIG"))
