"""Hyperparameter search over the trainer's recipe with Optuna: `flywheel tune`, the
`trainer_config` asset.

The search space is small on purpose, every trial being a whole training:

    lr               log-uniform 3e-4 .. 3e-2    AdamW's peak rate in the one-cycle schedule
    weight_decay     log-uniform 1e-4 .. 1e-1       the default, 0.05, inside
    label_smoothing  uniform     0 .. 0.2
    width            8, 16 or 32                 channels of the model's first stage
    steps            log-int  half to twice the step budget train.steps
    head             both, coord, spatial, pool  what the network does with where things are (flywheel/model.py)

A field that flywheel.yaml sets under `train:` is not searched (nor `steps` when it sets
`epochs`: a fixed number of passes leaves no step budget to search): every trial trains with the
user's value, as the challenger will. Trials start from the settings' recipe (`TrainConfig`),
train from scratch (a warm start would favour the champion's width), all with the same seed, on
the latest dataset version's train split, and are scored by `gate.metric` on its val split. The
first trial on a dataset version is the recipe itself, so the best is measured against it.
Pruning: at each quarter of its schedule a trial reports its val accuracy (what the trainer
measures each epoch) and the median rule stops it when it trails the earlier trials at that
point. Quarters, not epochs: under the one-cycle schedule epoch 3 of 12 and epoch 3 of 4 are at
different points of the learning rate's course.

The study lives in a database (`tune.storage`; default SQLite under $FLYWHEEL_HOME/tune/), one
study per dataset name, class list and image size: each run adds to what earlier runs learned,
and a new class list or image size starts a new study. The best trial on the current dataset
version (earlier versions' val splits are other frames) is written to
`tuning/<dataset>/trainer_config.json`; `tuned_train_config` applies it to the fields that
flywheel.yaml leaves unset. Every trial is an MLflow run nested under one "tune" run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import optuna
import torch
from optuna.trial import TrialState
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from flywheel import layout, plots
from flywheel.config import Settings
from flywheel.data import dataset
from flywheel.data.reader import ShardReader, load_arrays
from flywheel.evaluation.evaluate import accuracy, confusion_matrix, macro_f1
from flywheel.model import HEADS, load_weights
from flywheel.predict import predict
from flywheel.store import Store
from flywheel.tracking import Tracker
from flywheel.training.device import make_loader, pick_device
from flywheel.training.train import TrainConfig, train

SEARCHED = ("lr", "weight_decay", "label_smoothing", "width", "steps", "head")
WIDTHS = (8, 16, 32)
JUDGING_POINTS = 4  # a trial may be pruned at each quarter of its schedule ...
PRUNER = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)  # ... from the half on
METRICS = {"accuracy": accuracy, "macro_f1": macro_f1}
VAL_BATCH = 256  # frames per batch when scoring on val


def study_name(settings: Settings) -> str:
    """`<dataset>-<hash of class list and image size>`: another class list or size, another
    study."""
    inputs = json.dumps({"classes": settings.classes, "image_size": settings.image_size})
    return f"{settings.dataset.name}-{hashlib.sha256(inputs.encode()).hexdigest()[:10]}"


def storage_url(settings: Settings) -> str:
    """Optuna's database: `tune.storage`, else SQLite under $FLYWHEEL_HOME/tune/ (made here)."""
    if settings.tune.storage:
        return settings.tune.storage
    path = settings.home / "tune" / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def searched_fields(settings: Settings) -> list[str]:
    """The fields of SEARCHED that flywheel.yaml leaves unset under `train:` (`steps` only while
    `epochs` is unset too)."""
    fixed = settings.train.model_fields_set | ({"steps"} if settings.train.epochs is not None else set())
    return [f for f in SEARCHED if f not in fixed]


def tune(
    store: Store, settings: Settings, tracker: Tracker, *, trials: int | None = None,
    minutes: float | None = None, device: str | None = None,
) -> dict:  # fmt: skip
    """Run `trials` more trials (default `tune.trials`), starting none after `minutes`
    (`tune.minutes`); write the best recipe on the latest dataset version to the store and return
    it, with the history of that version's trials and its plot."""
    if settings.task == "detection":
        raise ValueError("flywheel tune searches the classifier's recipe (train:); with task: detection the "
                         "detector's recipe is detection: as set")  # fmt: skip
    trials = settings.tune.trials if trials is None else trials
    minutes = settings.tune.minutes if minutes is None else minutes
    if trials < 1 or minutes <= 0:
        raise ValueError(f"trials must be >= 1 and minutes > 0, got {trials} and {minutes}")
    searched = searched_fields(settings)
    if not searched:
        fields = ", ".join(f"train.{f}" for f in SEARCHED)
        raise ValueError(f"nothing to tune: flywheel.yaml sets every searched field ({fields})")
    name, metric = settings.dataset.name, settings.gate.metric
    manifest = dataset.load_manifest(store, name)
    version = manifest["version"]
    if manifest["classes"] != settings.classes:
        raise ValueError(f"dataset {name} v{version} has classes {manifest['classes']}, "
                         f"the settings {settings.classes}")  # fmt: skip
    base = TrainConfig.from_settings(settings, device=device)
    images, labels, _ = load_arrays(store, manifest, split="val", image_size=base.image_size)
    if len(labels) == 0:
        raise ValueError(f"dataset {name} v{version} has no val rows: trials are scored on val "
                         "(dataset.split)")  # fmt: skip
    url = storage_url(settings)
    study = optuna.create_study(study_name=study_name(settings), storage=url, direction="maximize",
                                pruner=PRUNER, load_if_exists=True)  # fmt: skip
    first = len(study.get_trials(deepcopy=False))
    # Seeded for reproducible draws, offset so that a run does not repeat the draws of the last one.
    study.sampler = optuna.samplers.TPESampler(seed=base.seed + first)
    if not _trials_on(study, version):  # the recipe itself first (its defaults lie in the space)
        study.enqueue_trial({f: getattr(base, f) for f in searched})

    tags = {"stage": "tune", "dataset": name, "dataset_version": str(version),
            "optuna.study": study.study_name}  # fmt: skip
    with tracker.run(f"tune {name} v{version}", tags=tags) as parent:
        tracker.log_params(parent, {
            "tune": {"trials": trials, "minutes": minutes, "metric": metric,
                     "storage": _without_password(url), "searched": ",".join(searched)},
            "train": base.model_dump(), "dataset.name": name, "dataset.version": version,
        })  # fmt: skip
        search = _Search(store=store, settings=settings, tracker=tracker, manifest=manifest,
                         base=base, searched=searched, images=images, labels=labels,
                         parent_run=parent)  # fmt: skip
        study.optimize(search.run_trial, n_trials=trials, timeout=minutes * 60)
        on_version = _trials_on(study, version)
        done = [t for t in on_version if t.state == TrialState.COMPLETE]
        if not done:
            raise ValueError(f"no trial of study {study.study_name} finished on dataset {name} "
                             f"v{version} within {trials} trial(s) and {minutes} min: "
                             "raise tune.trials or tune.minutes")  # fmt: skip
        best = max(done, key=lambda t: t.value)
        everything = study.get_trials(deepcopy=False)
        ran = [t for t in everything if t.number >= first]
        config = {
            "study": study.study_name, "storage": _without_password(url), "metric": metric,
            "best_value": best.value, "best_trial": best.number, "params": best.params,
            "dataset": {"name": name, "version": version,
                        "manifest_sha256": dataset.manifest_sha256(manifest)},
            "classes": settings.classes, "image_size": settings.image_size,
            "trials": {"run": len(ran), "pruned": sum(t.state == TrialState.PRUNED for t in ran),
                       "on_version": len(on_version), "in_study": len(everything)},
            "mlflow_run_id": parent, "tuned_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }  # fmt: skip
        history = [{"number": t.number, "state": t.state.name, "value": t.value}
                   for t in on_version]  # fmt: skip
        png = plots.optimization_history_png(history, metric)
        tracker.log_metrics(parent, {f"best_val_{metric}": best.value, **{
            f"trials_{k}": v for k, v in config["trials"].items()}})  # fmt: skip
        tracker.log_bytes(parent, "plots/optimization_history.png", png)
        tracker.log_json(parent, "trainer_config.json", config)
        store.write_json(layout.trainer_config_key(name), config)
    return {**config, "history": history, "history_png": png}


@dataclass(frozen=True)
class _Search:
    """What the trials of one tune run share; `run_trial` is the study's objective."""

    store: Store
    settings: Settings
    tracker: Tracker
    manifest: dict
    base: TrainConfig  # the settings' recipe; a trial replaces the searched fields
    searched: list[str]
    images: np.ndarray  # the val split, uint8 (N, 3, S, S), decoded once for all trials
    labels: np.ndarray  # (N,)
    parent_run: str  # the MLflow run of the tune run

    def run_trial(self, trial: optuna.Trial) -> float:
        """Train with the trial's values, as a nested MLflow run; `gate.metric` on val, or raise
        TrialPruned."""
        cfg = self.base.model_copy(update=_suggest(trial, self.searched, self.settings))
        trial.set_user_attr("dataset_version", self.manifest["version"])
        device, metric = pick_device(cfg.device), self.settings.gate.metric
        reader = ShardReader(self.store, self.manifest, split="train", image_size=cfg.image_size,
                             seed=cfg.seed, batch_size=cfg.batch_size,
                             geometric=self.settings.geometric_aug, batched=True, meta=False)  # fmt: skip
        tags = {"mlflow.parentRunId": self.parent_run, "stage": "tune-trial",
                "optuna.study": trial.study.study_name,
                "optuna.trial": str(trial.number)}  # fmt: skip
        loader = make_loader(reader, cfg=cfg, device=device)
        epochs = cfg.epochs_for(len(loader))  # what the trainer will take
        stopped = None
        with self.tracker.run(f"trial {trial.number}", tags=tags) as run_id:
            self.tracker.log_params(run_id, {"train": cfg.model_dump(), "trial": trial.number})

            def judge(epoch: int, metrics: dict[str, float]) -> None:
                self.tracker.log_metrics(run_id, metrics, step=epoch)
                point = _judging_point(epoch, epochs)
                if point is None:
                    return
                trial.report(metrics["val_acc"], point)
                if epoch + 1 < epochs and trial.should_prune():  # a finished trial is kept
                    raise optuna.TrialPruned(
                        f"pruned at val_acc {metrics['val_acc']:.3f} after epoch {epoch + 1} of "
                        f"{epochs}"
                    )

            # No checkpoint folder: a pruned or crashed trial leaves nothing to resume from.
            try:
                result = train(
                    train_loader=loader, val_loader=_batches(self.images, self.labels), classes=self.settings.classes,
                    cfg=cfg, set_epoch=reader.set_epoch, on_epoch_end=judge,
                )  # fmt: skip
            except optuna.TrialPruned as e:
                # The run ends FINISHED: stopping a trailing trial is the search at work.
                self.tracker.set_tags(run_id, {"optuna.state": "PRUNED"})
                stopped = e
            else:
                value = _score(result.weights, self.images, self.labels, metric=metric,
                               device=device)  # fmt: skip
                self.tracker.log_metrics(run_id, {f"val_{metric}": value})
                self.tracker.set_tags(run_id, {"optuna.state": "COMPLETE"})
        if stopped is not None:
            raise stopped
        return value


def tuned_train_config(
    store: Store, settings: Settings, *, device: str | None = None
) -> tuple[TrainConfig, str]:
    """The challenger's recipe: the settings' `TrainConfig` with the dataset's tuned values for the
    fields flywheel.yaml leaves unset, when they were tuned for the same class list and image size.

    Returns the recipe and where it came from: "tuned v<N>" (N: the dataset version tuned on) or
    "defaults".
    """
    cfg = TrainConfig.from_settings(settings, device=device)
    key = layout.trainer_config_key(settings.dataset.name)
    if not store.exists(key):
        return cfg, "defaults"
    tuned = store.read_json(key)
    if (tuned["classes"], tuned["image_size"]) != (settings.classes, settings.image_size):
        return cfg, "defaults"
    update = {k: v for k, v in tuned["params"].items() if k not in settings.train.model_fields_set}
    if not update:
        return cfg, "defaults"
    try:  # validated: the file is data in the store, not values from our own search space
        merged = TrainConfig.model_validate({**cfg.model_dump(), **update})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in e.errors())
        where = store.uri(key)
        raise ValueError(f"tuned config {where} does not fit the trainer: {problems}") from None
    return merged, f"tuned v{tuned['dataset']['version']}"


def recipe_id(cfg: TrainConfig) -> str:
    """8 hex digits of the searched fields' values: a challenger trained after a retune, on a
    dataset version already trained on, gets its own checkpoint folder (a checkpoint of other
    values cannot be resumed)."""
    values = json.dumps({f: getattr(cfg, f) for f in SEARCHED})
    return hashlib.sha256(values.encode()).hexdigest()[:8]


def retune_check(store: Store, settings: Settings) -> tuple[str | None, str]:
    """Whether a tune run is due: the newest challenger scored below the yardstick CNN on val
    (`stages.train_challenger`'s check) and no tune run came after it, or the class list or image
    size changed since the newest tuned config in the store.

    Returns (a string naming this reason, the same for every check until a tune run or a new
    challenger answers it, or None when no tuning is due; why).
    """
    if settings.task == "detection":
        return None, "task: detection: the detector's recipe (detection:) is not tuned"
    last = _newest_tuned(store)
    key = layout.baseline_check_key(settings.dataset.name)
    check = store.read_json(key) if store.exists(key) else None
    if check is not None and check["short"] and (last is None or _when(last["tuned_at"]) < _when(check["checked_at"])):
        why = (f"challenger v{check['model_version']} scored {check['metric']} {check['challenger']:.3f} "
               f"on val, short of the yardstick CNN's {check['baseline']:.3f}")  # fmt: skip
        return f"{study_name(settings)}:short-of-baseline:{check['model_version']}", why
    if last is None:
        return None, "no tuned config yet: the schedule or `flywheel tune` makes the first"
    was, now = (last["classes"], last["image_size"]), (settings.classes, settings.image_size)
    tuned_on = f"{last['dataset']['name']} v{last['dataset']['version']}"
    if was == now:
        return None, f"the config tuned on {tuned_on} has the settings' class list and image size"
    what = zip(("class list", "image size"), was, now, strict=True)
    changed = " and ".join(w for w, a, b in what if a != b) + f" changed since {tuned_on}"
    name = settings.dataset.name
    version = dataset.latest_version(store, name)
    if version is None or settings.classes != dataset.load_manifest(store, name)["classes"]:
        return None, f"{changed}, but dataset {name} has no version with these classes yet"
    return f"{study_name(settings)}:after:{last['mlflow_run_id']}", changed


def _when(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def _newest_tuned(store: Store) -> dict | None:
    """The most recently written tuned config of any dataset, or None."""
    names = {o.key.removeprefix(layout.TUNING).partition("/")[0] for o in store.list(layout.TUNING)}
    keys = [layout.trainer_config_key(n) for n in sorted(names)]
    configs = [store.read_json(k) for k in keys if store.exists(k)]
    return max(configs, key=lambda c: c["tuned_at"], default=None)


def _suggest(trial: optuna.Trial, searched: list[str], settings: Settings) -> dict:
    """The trial's values of the searched fields (see the module docstring)."""
    steps = settings.train.steps
    space = {
        "lr": lambda: trial.suggest_float("lr", 3e-4, 3e-2, log=True),
        "weight_decay": lambda: trial.suggest_float("weight_decay", 1e-4, 1e-1, log=True),
        "label_smoothing": lambda: trial.suggest_float("label_smoothing", 0.0, 0.2),
        "width": lambda: trial.suggest_categorical("width", WIDTHS),
        "steps": lambda: trial.suggest_int("steps", max(1, steps // 2), 2 * steps, log=True),
        "head": lambda: trial.suggest_categorical("head", HEADS),
    }
    return {f: space[f]() for f in searched}


def _judging_point(epoch: int, epochs: int) -> int | None:
    """The quarter of its schedule (1..4) a trial completes with this 0-based epoch, or None."""
    reached, before = JUDGING_POINTS * (epoch + 1) // epochs, JUDGING_POINTS * epoch // epochs
    return reached if reached > before else None


def _batches(images: np.ndarray, labels: np.ndarray) -> list[dict]:
    """The val split as the trainer's batches (views, no copies)."""
    return [{"image": torch.from_numpy(images[i : i + VAL_BATCH]),
             "label": torch.from_numpy(labels[i : i + VAL_BATCH])}
            for i in range(0, len(labels), VAL_BATCH)]  # fmt: skip


def _trials_on(study: optuna.Study, version: int) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials(deepcopy=False)
    return [t for t in trials if t.user_attrs.get("dataset_version") == version]


def _score(weights: bytes, images: np.ndarray, labels: np.ndarray, *, metric: str, device) -> float:
    """`metric` of the trained weights on the val frames (uint8 (N, 3, S, S), labels (N,))."""
    model, classes = load_weights(weights)
    preds = predict(model, images, device=device).probs.argmax(1)  # (N,)
    return METRICS[metric](confusion_matrix(preds, labels, len(classes)))


def _without_password(url: str) -> str:
    """The database URL as it may be logged: a password in it becomes ***."""
    return make_url(url).render_as_string(hide_password=True)
