"""Resources: the flywheel settings, and the store, MLflow and compute device built from them.

One config, one constructor: `SettingsResource` holds the only configuration; the store and the
tracker come from `flywheel.store.store_for` and `flywheel.tracking.tracker_for`, as everywhere
else in the flywheel.
"""

import functools
from typing import TYPE_CHECKING

import dagster as dg

from flywheel.config import (
    Settings,
    config_path,
    flywheel_home,
    format_overrides,
    load_settings,
    parse_overrides,
)
from flywheel.store import Store, store_for

if TYPE_CHECKING:
    from flywheel.tracking import Tracker

# Settings a run's config may change when it is launched (the UI's launchpad, GraphQL): the training
# knobs. Everything else (gate.force, store.root, compute images, MLflow, deploy, the config file)
# is fixed where the deployment is defined, so whoever can reach the UI cannot steer it.
LAUNCH_PREFIXES = ("train.", "tune.", "augment.")


class SettingsResource(dg.ConfigurableResource):
    """The validated flywheel settings (`flywheel.yaml`), with dotted-key overrides. Read and validated
    once per process for the same file, overrides and home (`_validated`): the settings, store, MLflow
    and compute resources of a step all hand down that one `Settings`; an edited file is read again."""

    config_path: str | None = None
    overrides: dict[str, str] = {}  # dotted key -> YAML value, as `--set` takes them: {"train.epochs": "2"}

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.dagster_run
        if run is not None:
            check_launch_config(run.run_config)

    def load(self) -> Settings:
        source = config_path(self.config_path)
        stamp = (str(source.resolve()) if source else None, source.stat().st_mtime_ns if source and source.exists() else None,
                 str(flywheel_home()))  # fmt: skip
        return _validated(self.config_path, tuple(sorted(self.overrides.items())), stamp)


@functools.lru_cache(maxsize=16)
def _validated(path: str | None, overrides: tuple[tuple[str, str], ...], stamp: tuple) -> Settings:
    """`load_settings` of these inputs; `stamp` (the file in use, its mtime, the home) makes an edit a miss."""
    return load_settings(path, **parse_overrides(dict(overrides)))


class StoreResource(dg.ConfigurableResource):
    """The store of the settings: a local folder or s3://bucket/prefix (`store.root`)."""

    settings: SettingsResource

    def open(self) -> Store:
        return store_for(self.settings.load())


class MlflowResource(dg.ConfigurableResource):
    """The MLflow tracker of the settings (`mlflow.tracking_uri`, else SQLite in $FLYWHEEL_HOME)."""

    settings: SettingsResource

    def tracker(self, context: dg.AssetExecutionContext | None = None) -> "Tracker":
        """With the asset's `context`, every MLflow run it starts is tagged with the Dagster run and job."""
        # MLflow takes seconds to import: only the steps that track pay for it
        from flywheel.tracking import tracker_for

        tags = {"dagster.run_id": context.run_id, "dagster.job": context.job_name} if context else None
        return tracker_for(self.settings.load(), run_tags=tags)


class ComputeResource(dg.ConfigurableResource):
    """Where training runs (`train.device`): auto (CUDA when present), cpu or cuda."""

    settings: SettingsResource

    @property
    def device(self) -> str:
        return self.settings.load().train.device


def resources_for(config_path: str | None, overrides: dict) -> dict:
    """The Definitions' resources: one SettingsResource, shared by the others; each reads the settings
    from `config_path` and `overrides` when a step or sensor runs, as a worker process does."""
    conf = SettingsResource(config_path=config_path, overrides=format_overrides(overrides))
    return {
        "settings": conf,
        "store": StoreResource(settings=conf),
        "mlflow": MlflowResource(settings=conf),
        "compute": ComputeResource(settings=conf),
    }


def check_launch_config(run_config: dict | None) -> None:
    """Refuse a run whose launch-time config sets resource settings outside LAUNCH_PREFIXES (or points
    at another config file): `gate.force` or `store.root` in the launchpad must not reach a step."""
    bad: list[str] = []
    for name, resource in ((run_config or {}).get("resources") or {}).items():
        config = (resource or {}).get("config") or {}
        if config.get("config_path") is not None:
            bad.append(f"{name}.config_path")
        bad += [k for k in (config.get("overrides") or {}) if not str(k).startswith(LAUNCH_PREFIXES)]
    if bad:
        raise dg.Failure(
            f"this run's launch config sets {sorted(bad)}, which a run may not change at launch (only "
            f"{', '.join(p + '*' for p in LAUNCH_PREFIXES)}): set them in flywheel.yaml where the deployment is defined"
        )
