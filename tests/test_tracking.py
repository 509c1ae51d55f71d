"""MLflow tracking: aliases answer "none" only when MLflow says so; any other error fails closed."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from flywheel import stages
from flywheel.config import load_settings
from flywheel.store import store_for
from flywheel.tracking import CHALLENGER, CHAMPION, MlflowError, tracker_for


def test_a_missing_model_or_alias_is_none(flywheel_home):
    tracker = tracker_for(load_settings())
    assert tracker.alias(CHAMPION) is None  # no registered model yet
    tracker.client.create_registered_model(tracker.model_name)
    assert tracker.alias(CHAMPION) is None  # a model, but no such alias


def test_an_mlflow_failure_is_an_error_and_the_evaluation_fails_closed(flywheel_home, monkeypatch):
    settings = load_settings()
    tracker = tracker_for(settings)

    def broken(name, alias):
        raise MlflowException("API request to http://mlflow:5000 failed: connection refused", error_code="INTERNAL_ERROR")

    monkeypatch.setattr(tracker.client, "get_model_version_by_alias", broken)
    with pytest.raises(MlflowError, match="could not say which version 'challenger'.*connection refused"):
        tracker.alias(CHALLENGER)
    with pytest.raises(MlflowError):  # not "no champion, judge against the floor"
        stages.evaluate_challenger(store_for(settings), settings, tracker, device="cpu")


def test_mlflow_ui_links_only_with_a_tracking_server():
    from flywheel.tracking import ui_urls

    args = dict(experiment_id="3", run_id="abc", model_name="perception", version="7")
    assert ui_urls("sqlite:///home/mlflow.db", **args) == {}  # no UI to link to
    assert ui_urls("http://mlflow:5000/", **args) == {
        "mlflow_run": "http://mlflow:5000/#/experiments/3/runs/abc",
        "mlflow_model_version": "http://mlflow:5000/#/models/perception/versions/7",
    }


def _registered(tracker, seed: int = 0) -> tuple[str, bytes]:
    """A tiny model registered as a new version: (version, its weights)."""
    import torch

    from flywheel.model import ModelConfig, build_model, save_weights

    torch.manual_seed(seed)
    cfg = ModelConfig(num_classes=2, image_size=16, width=4, depth=1)
    weights = save_weights(build_model(cfg), cfg, ["a", "b"])
    with tracker.run("train") as run_id:
        version = tracker.register(run_id, weights)
    return version, weights


def _swap_artifact(tracker, version: str, data: bytes, tmp_path) -> None:
    """What someone with write access to MLflow's artifacts could do after the gate."""
    from flywheel.tracking import WEIGHTS

    path = tmp_path / "weights.pt"
    path.write_bytes(data)
    tracker.client.log_artifact(tracker.version_run(version), str(path), artifact_path="model")
    assert tracker.client.get_model_version(tracker.model_name, version).source  # still the same version
    assert WEIGHTS.endswith("weights.pt")


def test_weights_are_checked_against_the_hash_recorded_at_registration(flywheel_home, tmp_path):
    import hashlib

    from flywheel.tracking import WeightsChanged

    tracker = tracker_for(load_settings())
    version, weights = _registered(tracker)
    sha = hashlib.sha256(weights).hexdigest()
    assert tracker.version_tags(version)["weights_sha256"] == sha
    assert tracker.weights(version, sha256=sha) == weights
    with pytest.raises(WeightsChanged, match="not the ones judged by the gate"):
        tracker.weights(version, sha256="0" * 64)
    _, other = _registered(tracker, seed=1)
    _swap_artifact(tracker, version, other, tmp_path)
    with pytest.raises(WeightsChanged, match=f"v{version} are not the ones registered"):
        tracker.weights(version)


def test_a_deploy_refuses_weights_swapped_after_the_gate(flywheel_home, tmp_path):
    """The gate judged some bytes; the artifact is replaced afterwards; the deploy refuses and moves nothing."""
    import hashlib

    from flywheel import layout
    from flywheel.deployment import deploy
    from flywheel.tracking import WeightsChanged

    settings = load_settings(classes=["a", "b"], image_size=16)
    tracker, store = tracker_for(settings), store_for(settings)
    version, weights = _registered(tracker)
    judged = {"passed": True, "forced": False, "reason": "test: passed"}
    store.write_json(layout.evaluation_key(settings.mlflow.model_name, version),
                     {"gate": judged, "dataset_version": 1,
                      "weights_sha256": {"challenger": hashlib.sha256(weights).hexdigest(), "champion": None}})  # fmt: skip
    _, other = _registered(tracker, seed=1)  # v2 is now the challenger alias: point it back at v1
    tracker.set_alias(CHALLENGER, version)
    _swap_artifact(tracker, version, other, tmp_path)
    with pytest.raises(WeightsChanged, match="refusing"):
        stages.deploy_challenger(store, settings, tracker)
    assert deploy.current(store, settings.mlflow.model_name) is None and tracker.alias(CHAMPION) is None
