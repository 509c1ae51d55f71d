"""Resources: the flywheel settings, the store, MLflow and the compute device."""


import json
from pathlib import Path

import dagster as dg

from flywheel.config import Settings, load_settings
from flywheel.store import Store, open_store
from flywheel.tracking import Tracker


class SettingsResource(dg.ConfigurableResource):
    """The validated flywheel settings (`flywheel.yaml`), with dotted-key overrides."""

    config_path: str | None = None
    overrides: dict[str, str] = {}  # dotted key -> JSON value, e.g. {"train.epochs": "2"}

    def load(self) -> Settings:
        return load_settings(self.config_path, **{k: json.loads(v) for k, v in self.overrides.items()})


class StoreResource(dg.ConfigurableResource):
    """The store root: a local folder or s3://bucket/prefix (any S3-compatible endpoint)."""

    root: str
    endpoint_url: str | None = None
    region: str = "us-east-1"

    def open(self) -> Store:
        return open_store(self.root, endpoint_url=self.endpoint_url, region=self.region)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking server (or local SQLite store) and the registered model's name."""

    tracking_uri: str
    model_name: str = "perception"
    experiment: str = "flywheel"
    artifact_root: str | None = None  # for a local tracking store; a server decides its own

    def tracker(self) -> Tracker:
        root = Path(self.artifact_root) if self.artifact_root else None
        return Tracker(self.tracking_uri, experiment=self.experiment, model_name=self.model_name, artifact_root=root)


class ComputeResource(dg.ConfigurableResource):
    """Where training runs: auto (CUDA when present), cpu or cuda."""

    device: str = "auto"


def resources_for(settings: Settings, config_path: str | None, overrides: dict) -> dict:
    return {
        "settings": SettingsResource(
            config_path=config_path, overrides={k: json.dumps(v) for k, v in overrides.items()}
        ),
        "store": StoreResource(
            root=settings.store_root, endpoint_url=settings.store.endpoint_url, region=settings.store.region
        ),
        "mlflow": MlflowResource(
            tracking_uri=settings.tracking_uri,
            model_name=settings.mlflow.model_name,
            experiment=settings.mlflow.experiment,
            artifact_root=None if settings.mlflow.tracking_uri else str(settings.home / "mlflow" / "artifacts"),
        ),
        "compute": ComputeResource(device=settings.train.device),
    }
