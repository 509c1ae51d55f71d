"""MLflow: training runs, the registered model, and its `challenger` / `champion` aliases.

The embedded default is a SQLite tracking store with a local artifact folder under
$FLYWHEEL_HOME; any tracking server works by URI. Models are registered from plain artifacts
(weights as a state dict + config JSON, no pickles), so registering costs milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flywheel.recovery import created_once

CHALLENGER, CHAMPION = "challenger", "champion"
WEIGHTS = "model/weights.pt"
WEIGHTS_SHA256 = "weights_sha256"  # model version tag: the sha256 of the weights registered
# MLflow 3's UI opens an experiment without this tag in its GenAI view; ours trains models.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


class Tracker:
    """A thin layer over MlflowClient with the flywheel's verbs."""

    def __init__(self, tracking_uri: str, *, experiment: str, model_name: str, artifact_root: Path | None = None,
                 run_tags: dict[str, str] | None = None):  # fmt: skip
        """`run_tags` go on every run this tracker starts (e.g. the orchestrator's run id)."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self.default_tags = dict(run_tags or {})
        for name in ("mlflow.store.db.utils", "alembic"):  # schema-migration chatter on first use
            logging.getLogger(name).setLevel(logging.WARNING)
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        # The first client migrates the SQLite schema; two processes doing it at once break it.
        with created_once(db) if tracking_uri.startswith("sqlite:///") else nullcontext():
            self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            self.experiment_id = self._experiment(experiment, artifact_root)

    def _experiment(self, name: str, artifact_root: Path | None) -> str:
        """The experiment's id, created if missing (by another process too, at the same moment)."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if any(exp.tags.get(k) != v for k, v in EXPERIMENT_KIND.items()):  # made by an older flywheel
                for k, v in EXPERIMENT_KIND.items():
                    self.client.set_experiment_tag(exp.experiment_id, k, v)
            return exp.experiment_id
        location = artifact_root.resolve().as_uri() if artifact_root else None
        try:
            return self.client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
            return self.client.get_experiment_by_name(name).experiment_id

    @contextmanager
    def run(self, name: str, tags: dict[str, str] | None = None):
        """A run that is FINISHED on success and FAILED if the block raises."""
        tags = {"code_version": code_version(), **self.default_tags, **(tags or {})}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        try:
            yield run.info.run_id
        except BaseException:
            self.client.set_terminated(run.info.run_id, "FAILED")
            raise
        self.client.set_terminated(run.info.run_id, "FINISHED")

    def log_params(self, run_id: str, params: dict) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in _flatten(params).items()]
        for start in range(0, len(items), 100):  # one request per 100 (MLflow's limit per batch)
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict, step: int | None = None) -> None:
        """All numbers of `metrics` in one request (an epoch's metrics: one round trip, not one each)."""
        now = int(time.time() * 1000)
        items = [Metric(_metric_key(k), float(v), now, step or 0) for k, v in _flatten(metrics).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]  # fmt: skip
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start : start + 1000])

    def log_bytes(self, run_id: str, path: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(path).name
            local.write_bytes(data)
            parent = str(Path(path).parent)
            self.client.log_artifact(run_id, str(local), artifact_path=None if parent == "." else parent)

    def log_json(self, run_id: str, path: str, obj) -> None:
        self.log_bytes(run_id, path, json.dumps(obj, indent=2, default=str).encode())

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def register(self, run_id: str, weights: bytes, *, tags: dict[str, str] | None = None,
                 description: str = "") -> str:  # fmt: skip
        """Log the model (an MLflow pytorch model that `mlflow.pyfunc.load_model` serves, and the plain
        weights beside it), register it as a new model version and move `challenger` to it."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            save_mlflow_model(weights, folder)
            (folder / Path(WEIGHTS).name).write_bytes(weights)
            self.client.log_artifacts(run_id, str(folder), artifact_path=str(Path(WEIGHTS).parent))
        try:
            self.client.create_registered_model(self.model_name)
        except MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
        source = f"{self.client.get_run(run_id).info.artifact_uri}/model"
        tags = {**(tags or {}), WEIGHTS_SHA256: hashlib.sha256(weights).hexdigest()}  # what later stages check
        mv = self.client.create_model_version(self.model_name, source, run_id=run_id, tags=tags,
                                              description=description)  # fmt: skip
        self.set_alias(CHALLENGER, mv.version)
        return str(mv.version)

    def log_judgement(self, version: str, result: dict, pngs: dict[str, bytes], *, passed: bool, reason: str,
                      frames: str) -> None:  # fmt: skip
        """An evaluation of model `version` on its training run: the plots, the record, the gate's tags and a
        line in the version's description (`frames`: what it was judged on)."""
        run_id = self.version_run(version)
        for plot, png in pngs.items():
            self.log_bytes(run_id, f"plots/{plot}.png", png)
        self.log_json(run_id, "evaluation.json", result)
        self.set_tags(run_id, {"gate": "passed" if passed else "failed", "gate_reason": reason[:500]})
        self.describe(version, f"Gate {'passed' if passed else 'kept the champion'} ({frames}): {reason}")

    def describe(self, version: str, line: str) -> None:
        """Add a line to a model version's description (what it was trained on, what the gate said)."""
        before = self.client.get_model_version(self.model_name, str(version)).description or ""
        self.client.update_model_version(self.model_name, str(version), description=f"{before}\n{line}".strip())

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.model_name, alias, str(version))

    def alias(self, alias: str) -> str | None:
        """The version an alias points to; None only when MLflow says there is no such model or alias.

        Any other error (an unreachable tracking server, a broken database) raises: read as "no
        champion", it would let the gate judge a challenger against the floor alone (fail open).
        """
        try:
            return str(self.client.get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException as e:
            if _not_found(e, alias):
                return None
            raise MlflowError(f"MLflow at {self.tracking_uri} could not say which version {alias!r} of model "
                              f"{self.model_name!r} is: {str(e).splitlines()[0]}") from e

    def weights(self, version: str, *, sha256: str | None = None) -> bytes:
        """The weights of a registered model version, checked against the hash recorded when it was
        registered and, when given, against `sha256` (the bytes a gate judged): a swapped artifact raises."""
        mv = self.client.get_model_version(self.model_name, str(version))
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(self.client.download_artifacts(mv.run_id, WEIGHTS, tmp)).read_bytes()
        got = hashlib.sha256(data).hexdigest()
        for what, want in (("registered", mv.tags.get(WEIGHTS_SHA256)), ("judged by the gate", sha256)):
            if want is not None and got != want:
                raise WeightsChanged(f"the weights of {self.model_name} v{version} are not the ones {what} "
                                     f"(sha256 {want[:12]}..., now {got[:12]}...): refusing to use them")  # fmt: skip
        return data

    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    def read_json(self, run_id: str, path: str):
        """A JSON artifact of a run (what `log_json` wrote)."""
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(self.client.download_artifacts(run_id, path, tmp)).read_text())

    def version_run(self, version: str) -> str:
        return self.client.get_model_version(self.model_name, str(version)).run_id

    def version_tags(self, version: str) -> dict[str, str]:
        """A registered model version's tags (dataset_version, ...)."""
        return dict(self.client.get_model_version(self.model_name, str(version)).tags)


class WeightsChanged(ValueError):
    """A model version's weights artifact is not the bytes recorded for it (registration or gate)."""


class MlflowError(RuntimeError):
    """MLflow failed to answer (unreachable, broken): a stage that needs the answer fails closed."""


def _not_found(e: MlflowException, alias: str) -> bool:
    """MLflow's answer "no such registered model" or "no such alias", as opposed to a failure."""
    if e.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    return e.error_code == "INVALID_PARAMETER_VALUE" and f"alias {alias} not found" in str(e)


def ui_urls(tracking_uri: str, *, experiment_id: str, run_id: str, model_name: str, version: str) -> dict[str, str]:
    """Links into the MLflow UI for a run and its model version; none for a store without a UI (SQLite)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return {}
    base = tracking_uri.rstrip("/")
    return {"mlflow_run": f"{base}/#/experiments/{experiment_id}/runs/{run_id}",
            "mlflow_model_version": f"{base}/#/models/{model_name}/versions/{version}"}  # fmt: skip


def save_mlflow_model(weights: bytes, path: Path) -> None:
    """The model of `weights` (`flywheel.model.save_weights`) as an MLflow pytorch model at `path`: a
    torch.export program (no pickle), uint8 frames (N, 3, S, S) in, logits out, with its signature
    and an input example; `mlflow.pyfunc.load_model` serves it without flywheel installed."""
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from flywheel.detection.model import StackedHeads, is_detector, load_detector
    from flywheel.model import load_weights

    if is_detector(weights):  # one output: the heads stacked, heatmap logits (C), size (2), offset (2) per cell
        model = StackedHeads(load_detector(weights)[0])
    else:
        model, _ = load_weights(weights)
    size = model.cfg.image_size
    example = np.zeros((2, 3, size, size), np.uint8)
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    with warnings.catch_warnings():  # export's notes on dynamic shapes: the batch stays dynamic
        warnings.simplefilter("ignore")
        mlflow.pytorch.save_model(model, str(path), serialization_format="pt2", pip_requirements=["torch"],
                                  signature=infer_signature(example, logits), input_example=example)  # fmt: skip


def tracker_for(settings, *, run_tags: dict[str, str] | None = None) -> Tracker:
    """The MLflow tracker of these settings (`flywheel.config.Settings`); a tracking server decides its
    own artifact root, the embedded SQLite store keeps artifacts under $FLYWHEEL_HOME. `run_tags`: on
    every run it starts."""
    m = settings.mlflow
    return Tracker(settings.tracking_uri, experiment=m.experiment, model_name=m.model_name,
                   artifact_root=None if m.tracking_uri else settings.home / "mlflow" / "artifacts",
                   run_tags=run_tags)  # fmt: skip


def code_version() -> str:
    """The git commit of the code (with `-dirty` if changed), else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)  # fmt: skip
        if sha.returncode == 0:
            return sha.stdout.strip()[:12] + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    from importlib.metadata import version

    return f"flywheel-{version('flywheel')}"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _metric_key(k: str) -> str:
    # MLflow keys allow alphanumerics, '_', '-', '.', ' ', '/' and ':'; slice names may hold '='.
    return "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in k)


__all__ = ["Tracker", "CHALLENGER", "CHAMPION", "code_version", "mlflow", "tracker_for"]
