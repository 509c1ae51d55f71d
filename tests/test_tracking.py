"""MLflow tracking: aliases answer "none" only when MLflow says so; any other error fails closed."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from flywheel import loop
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
        loop.evaluate_challenger(store_for(settings), settings, tracker, device="cpu")


def test_mlflow_ui_links_only_with_a_tracking_server():
    from flywheel.tracking import ui_urls

    args = dict(experiment_id="3", run_id="abc", model_name="perception", version="7")
    assert ui_urls("sqlite:///home/mlflow.db", **args) == {}  # no UI to link to
    assert ui_urls("http://mlflow:5000/", **args) == {
        "mlflow_run": "http://mlflow:5000/#/experiments/3/runs/abc",
        "mlflow_model_version": "http://mlflow:5000/#/models/perception/versions/7",
    }
