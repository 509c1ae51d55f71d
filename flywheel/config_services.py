"""The settings sections of where the loop runs: the store, MLflow, the compute resource, Label
Studio and the sensors' batch sizes. `flywheel.config.Settings` holds them beside the loop's own
sections; each rejects unknown keys and is frozen once loaded.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flywheel.layout import check_name


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSettings(_Section):
    root: str | None = None  # None: $FLYWHEEL_HOME; or a folder; or s3://bucket/prefix
    endpoint_url: str | None = None  # any S3-compatible server
    region: str = "us-east-1"

    @field_validator("root")
    @classmethod
    def _folder_or_s3(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v.startswith("s3://"):
            if not v[5:].partition("/")[0]:
                raise ValueError(f"{v!r} names no bucket: use s3://bucket/prefix")
        elif "://" in v:
            raise ValueError(f"{v!r} is neither a folder nor s3://bucket/prefix")
        return v


class SensorSettings(_Section):
    min_clips: int = Field(20, ge=1)  # new clips in landing that make a fleet batch
    max_clips: int = Field(500, ge=1)  # at most this many clips in one batch
    # Pages of landing (1,000 keys each on S3) one tick lists at most: a bigger landing (it keeps every
    # clip ever ingested) is gone round over several ticks, so that no tick grows with it.
    max_list_pages: int = Field(50, ge=1)
    min_new_frames: int = Field(200, ge=0)  # new labeled frames that trigger training
    nightly_cron: str = "0 2 * * *"  # a full iteration every night, even below the thresholds
    # A failed ingest runs again after ingest_retry_s, then twice as long after each further failure,
    # until max_ingest_attempts runs have failed: then the batch is parked (`flywheel status`).
    max_ingest_attempts: int = Field(5, ge=1)
    ingest_retry_s: float = Field(60.0, ge=0)


class MlflowSettings(_Section):
    tracking_uri: str | None = None  # None: SQLite under $FLYWHEEL_HOME
    model_name: str = "perception"
    experiment: str = "flywheel"

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, v: str) -> str:
        return check_name(v, "model name")  # part of the evaluation and deploy keys


class ComputeSettings(_Section):
    """Where the challenger trains: a torchrun subprocess beside the Dagster step (`subprocess`), or a
    Kubernetes pod (`k8s`); both through Dagster Pipes (DESIGN.md §5, README "Scaling out")."""

    launcher: Literal["subprocess", "k8s"] = "subprocess"
    nproc_per_node: int = Field(1, ge=1)  # torchrun ranks: one per GPU on a GPU node, 1-2 on a CPU
    k8s_image: str | None = None  # an image with flywheel installed (required with launcher k8s)
    k8s_namespace: str | None = None  # None: the namespace Dagster runs in
    # the training container's resource limits (and requests), e.g. {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "8"}
    k8s_resources: dict[str, str] = {}
    k8s_service_account: str | None = None

    @model_validator(mode="after")
    def _k8s_needs_an_image(self) -> ComputeSettings:
        if self.launcher == "k8s" and not self.k8s_image:
            raise ValueError(
                "compute.launcher k8s needs compute.k8s_image (an image with flywheel installed)"
            )
        return self


class LabelStudioSettings(_Section):
    """A Label Studio server for the human queue (flywheel/labeling/labelstudio_sync.py); without one, the
    queue is the file exchange under labeling/ alone."""

    url: str | None = None  # None: $LABEL_STUDIO_URL, else no server
    api_key_env: str = (
        "LABEL_STUDIO_API_KEY"  # the variable holding its access token (never the token itself)
    )
    project: str | None = None  # the project's title; None: "flywheel <dataset name>"
    settle_s: float = Field(
        120.0, ge=0
    )  # a half-answered batch is exported once untouched this long
    # the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, for a local store; None: the store's
    # labeling/images/ (the queued images alone: the server may hand out anything under it)
    document_root: str | None = None
    # how long an S3 store's presigned image URL lives; each sync renews those of unanswered tasks
    # that are past half of it, so an annotator always finds a working image and a leaked URL dies soon
    url_lifetime_s: int = Field(24 * 3600, ge=300, le=7 * 24 * 3600)
