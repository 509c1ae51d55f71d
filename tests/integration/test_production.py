"""The production profile end to end: Dagster on PostgreSQL, an MLflow server (PostgreSQL + S3),
the store on S3, and training under torchrun. These run last in the session (conftest)."""

import json

import boto3
import dagster as dg
import numpy as np
import pytest
from click.testing import CliRunner

from flywheel import stages
from flywheel.cli import main
from flywheel.config import load_settings
from flywheel.data.reader import load_arrays
from flywheel.deployment import deploy
from flywheel.model import load_weights
from flywheel.predict import predict
from flywheel.sim import simulate
from flywheel.store import open_store
from flywheel.tracking import CHALLENGER, CHAMPION, tracker_for
from flywheel.training import distributed
from tests.synthetic import separable_dataset

pytestmark = pytest.mark.integration


def _bucket_keys(endpoint: str, bucket: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    return [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]


@pytest.mark.slow
def test_flywheel_iterate_on_the_production_profile(
    prod_config, mlflow_server, dagster_home, s3_endpoint
):
    """`flywheel iterate` with only FLYWHEEL_CONFIG and DAGSTER_HOME changed from the embedded default."""
    config = prod_config(
        mlflow_server.uri, **{"mlflow.experiment": "iterate", "mlflow.model_name": "iterate"}
    )
    settings = load_settings(config)
    store = open_store(settings.store_root, endpoint_url=settings.store.endpoint_url)
    simulate(store, settings, clips=12, seed=1)

    result = CliRunner().invoke(main, ["iterate"], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    # Dagster: both runs recorded in the PostgreSQL instance
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        runs = {r.job_name: r.status for r in instance.get_runs()}
        # with a tracking server, the challenger links to its MLflow run and model version
        trained = instance.get_latest_materialization_event(dg.AssetKey("challenger")).asset_materialization
        assert trained.metadata["mlflow_model_version"].value == f"{mlflow_server.uri}/#/models/iterate/versions/1"
        assert trained.metadata["mlflow_run"].value.startswith(f"{mlflow_server.uri}/#/experiments/")
    assert runs == {
        "ingest_batch": dg.DagsterRunStatus.SUCCESS,
        "train_and_deploy": dg.DagsterRunStatus.SUCCESS,
    }

    # MLflow server: the model is registered and aliased; its artifacts went to S3 through the server
    tracker = tracker_for(settings)
    assert tracker.alias(CHALLENGER) == tracker.alias(CHAMPION) == "1"
    assert tracker.client.get_experiment(tracker.experiment_id).artifact_location.startswith(
        "mlflow-artifacts:"
    )
    run_id = tracker.version_run("1")
    assert any(
        k.endswith(f"{run_id}/artifacts/model/weights.pt")
        for k in _bucket_keys(s3_endpoint, mlflow_server.bucket)
    )

    # the store on S3 holds the deployed champion
    assert deploy.current(store, settings.mlflow.model_name)["version"] == "v1"
    status = CliRunner().invoke(main, ["status", "--json"], catch_exceptions=False)
    assert json.loads(status.output)["champion"]["version"] == "v1"


# One colour per class (RGB); a frame is noise with a square of its class's colour somewhere.
def _test_accuracy(store, settings, manifest, tracker, version: str) -> float:
    images, labels, _ = load_arrays(store, manifest, split="test", image_size=settings.image_size)
    model, _ = load_weights(tracker.weights(version))
    return float((predict(model, images).probs.argmax(1) == labels).mean())


@pytest.mark.slow
def test_torchrun_two_ranks_reach_the_quality_of_one(prod_config, mlflow_server, tmp_path):
    """2-rank DDP (gloo on loopback) vs one process, same data and the same global batch of 32."""
    sizes = {
        "train.epochs": 2,
        "train.lr": 1e-2,
        # DDP mechanics on the pooled head. The default head ("both") has BatchNorm in its head and reached
        # 0.73 with 2 ranks of 16 frames against 0.91 in one process of 32 here (4 epochs): not yet understood.
        "train.head": "pool",
        "mlflow.experiment": "ddp",
        "mlflow.model_name": "ddp",
    }
    config = prod_config(mlflow_server.uri, **sizes)
    settings = load_settings(config)
    store = open_store(settings.store_root, endpoint_url=settings.store.endpoint_url)
    manifest = separable_dataset(store, settings, per_split={"train": 384, "val": 64, "test": 128})
    tracker = tracker_for(settings)

    single = stages.train_challenger(store, settings, tracker, device="cpu")
    ddp = distributed.train_challenger_torchrun(
        nproc=2, workdir=tmp_path, config_path=str(config), overrides={"train.batch_size": 16}, device="cpu",
        env={"FLYWHEEL_HOME": str(tmp_path / "ddp-home")},  # its own checkpoints: no resume from `single`'s
        timeout=300,
    )  # fmt: skip
    assert (single["version"], ddp["version"]) == ("1", "2") and tracker.alias(CHALLENGER) == "2"
    assert ddp["dataset_version"] == single["dataset_version"] == manifest["version"]
    # each rank read its half of the train rows (the reader cuts them to equal shares)
    assert single["train_rows"] // 2 <= ddp["train_rows"] <= -(-single["train_rows"] // 2)
    assert len(ddp["history"]) == len(single["history"]) == 2
    assert ddp["history"][-1]["train_loss"] < ddp["history"][0]["train_loss"]

    acc_single = _test_accuracy(store, settings, manifest, tracker, single["version"])
    acc_ddp = _test_accuracy(store, settings, manifest, tracker, ddp["version"])
    _, labels, _ = load_arrays(store, manifest, split="test", image_size=settings.image_size)
    majority = np.bincount(labels).max() / len(labels)
    print(
        f"test accuracy: 1 process {acc_single:.3f}, 2 ranks {acc_ddp:.3f}, majority class {majority:.3f}"
    )
    assert acc_single > 0.6 and acc_ddp > 0.6  # well above chance (1/6): both learned
    assert abs(acc_ddp - acc_single) <= 0.1
