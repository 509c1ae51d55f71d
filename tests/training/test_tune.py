"""Hyperparameter search: `flywheel tune` end to end, the tuned recipe in the next training, the
retune sensor."""


import dagster as dg
import optuna
import pytest
from click.testing import CliRunner

from flywheel import layout, stages
from flywheel.cli import Ctx, main
from flywheel.config import format_overrides, load_settings
from flywheel.definitions import build_definitions
from flywheel.ingest import commit_batch, plan_batch
from flywheel.sim import simulate
from flywheel.store import open_store
from flywheel.tracking import tracker_for
from flywheel.training import tune
from flywheel.training.train import TrainConfig
from resources import SettingsResource, StoreResource
from sensors.tune import retune_on_new_inputs

# train.epochs and train.width are set, so not searched (nor train.steps, the step budget of runs
# whose epochs are unset): the trials tune lr, weight_decay and label_smoothing.
TINY = """
sim: {frames_per_clip: 4}
image_size: 32
train: {epochs: 2, width: 8, depth: 1, batch_size: 32, device: cpu}
dataset: {golden_size: 10, split: {train: 0.5, val: 0.3, test: 0.2}}
"""


@pytest.fixture
def tiny(tmp_path):
    """flywheel.yaml with TINY, and its settings."""
    config = tmp_path / "flywheel.yaml"
    config.write_text(TINY)
    return config, load_settings(config)


def _dataset(settings, instance, defs) -> None:
    """One fleet batch ingested through the graph, and dataset v1 of it."""
    store = open_store(settings.store_root)
    simulate(store, settings, clips=12, seed=1)
    plan = plan_batch(store, min_clips=1, max_clips=100)
    commit_batch(store, plan)
    instance.add_dynamic_partitions("fleet_batches", [plan.batch_id])
    ingest = defs.resolve_job_def("ingest_batch")
    assert ingest.execute_in_process(instance=instance, partition_key=plan.batch_id).success
    assert stages.build_dataset_version(store, settings)[0]["version"] == 1


def test_flywheel_tune_then_the_challenger_trains_with_the_best_values(tiny, monkeypatch):
    config, settings = tiny
    # The command's instance is $FLYWHEEL_HOME/dagster: it sets DAGSTER_HOME, unset after the test.
    monkeypatch.setenv("DAGSTER_HOME", "unset")
    monkeypatch.delenv("DAGSTER_HOME")
    ctx = Ctx(str(config), {})
    with ctx.instance() as instance:
        _dataset(settings, instance, ctx.definitions())
        out = CliRunner().invoke(main, ["--config", str(config), "tune", "--trials", "3"])
        assert out.exit_code == 0, out.output
        assert "3 trial(s) run" in out.output and "train.lr:" in out.output
        [run] = instance.get_runs(dg.RunsFilter(job_name="tune"))
        assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags["flywheel/kind"] == "training"
        mat = instance.get_latest_materialization_event(dg.AssetKey("trainer_config"))
        assert mat.asset_materialization.metadata["trials_run"].value == 3

    store = open_store(settings.store_root)
    tuned = store.read_json(layout.trainer_config_key("perception"))
    assert set(tuned["params"]) == {"lr", "weight_decay", "label_smoothing", "head"}
    assert tuned["dataset"]["version"] == 1 and tuned["classes"] == settings.classes
    assert tuned["trials"]["run"] == 3 and 0 <= tuned["best_value"] <= 1
    study = optuna.load_study(study_name=tuned["study"], storage=tune.storage_url(settings))
    assert len(study.trials) == 3
    # the recipe itself is the first trial
    assert study.trials[0].params == {"lr": 3e-3, "weight_decay": 0.05, "label_smoothing": 0.1, "head": "both"}

    tracker = tracker_for(settings)
    [parent] = tracker.client.search_runs([tracker.experiment_id], "tags.stage = 'tune'")
    assert parent.info.run_id == tuned["mlflow_run_id"] and parent.info.status == "FINISHED"
    nested = f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    children = tracker.client.search_runs([tracker.experiment_id], nested)
    assert len(children) == 3 and all("val_acc" in c.data.metrics for c in children)

    # The next challenger: the tuned values where flywheel.yaml sets none, its own where it does.
    out = stages.train_challenger(store, settings, tracker, device="cpu")
    trained = tracker.client.get_run(out["run_id"]).data
    assert trained.tags["trainer_config"] == "tuned v1"
    for field in ("lr", "weight_decay", "label_smoothing"):
        assert float(trained.params[f"train.{field}"]) == pytest.approx(tuned["params"][field])
    assert (trained.params["train.width"], trained.params["train.epochs"]) == ("8", "2")
    # ... and is scored against the yardstick CNN on val, for the retune sensor
    check = out["baseline_check"]
    assert check == store.read_json(layout.baseline_check_key("perception"))
    assert check["model_version"] == out["version"] and check["baseline_epochs"] == settings.tune.baseline_epochs
    assert trained.metrics["challenger_val_macro_f1"] == check["challenger"]
    assert trained.metrics["baseline_val_macro_f1"] == check["baseline"]
    assert trained.tags["short_of_baseline"] == str(check["verdict"] == "short").lower()
    assert trained.tags["baseline_check"] == check["verdict"] in ("ok", "short", "broken")


def test_a_pruned_trial_ends_its_run_and_leaves_nothing_behind(tiny, flywheel_home, monkeypatch):
    config, settings = tiny
    with dg.instance_for_test() as instance:
        _dataset(settings, instance, build_definitions(settings, config_path=str(config)))
    every_trial_trails = optuna.pruners.ThresholdPruner(lower=2.0)
    monkeypatch.setattr(tune, "PRUNER", every_trial_trails)
    store, tracker = open_store(settings.store_root), tracker_for(settings)
    with pytest.raises(ValueError, match="no trial of study perception-.* finished on dataset"):
        tune.tune(store, settings, tracker, trials=1)
    storage = tune.storage_url(settings)
    [trial] = optuna.load_study(study_name=tune.study_name(settings), storage=storage).trials
    # judged after the first of its two epochs (half its schedule), and pruned there
    assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [2]
    [parent] = tracker.client.search_runs([tracker.experiment_id], "tags.stage = 'tune'")
    nested = f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    [child] = tracker.client.search_runs([tracker.experiment_id], nested)
    assert (child.info.status, child.data.tags["optuna.state"]) == ("FINISHED", "PRUNED")
    assert parent.info.status == "FAILED"  # no trial finished: no config to write
    assert not store.exists(layout.trainer_config_key("perception"))
    assert not (flywheel_home / "checkpoints").exists()


def _write_tuned(store, settings, **changes) -> None:
    """A tuned config as `tune` writes it (the fields that matter here), for these settings."""
    tuned = {"params": {"lr": 0.01, "width": 32, "steps": 1200}, "classes": settings.classes,
             "image_size": settings.image_size, "mlflow_run_id": "run-1",
             "dataset": {"name": settings.dataset.name, "version": 3},
             "tuned_at": "2026-11-01T03:00:00+00:00", **changes}  # fmt: skip
    store.write_json(layout.trainer_config_key(settings.dataset.name), tuned)


def test_searched_fields_leave_out_what_flywheel_yaml_sets():
    assert tune.searched_fields(load_settings()) == list(tune.SEARCHED)
    assert tune.searched_fields(load_settings(**{"train.width": 8})) == [
        "lr", "weight_decay", "label_smoothing", "steps", "head"]  # fmt: skip
    # a fixed number of passes leaves no step budget to search
    assert "steps" not in tune.searched_fields(load_settings(**{"train.epochs": 4}))


def test_tuned_values_apply_only_where_flywheel_yaml_sets_none():
    settings = load_settings(**{"train.width": 8})
    store = open_store(settings.store_root)
    assert tune.tuned_train_config(store, settings)[1] == "defaults"  # nothing tuned yet
    _write_tuned(store, settings)
    cfg, recipe = tune.tuned_train_config(store, settings)
    assert recipe == "tuned v3" and (cfg.lr, cfg.steps, cfg.width) == (0.01, 1200, 8)
    other_size = load_settings(**{"train.width": 8, "image_size": 48})
    defaults = (TrainConfig.from_settings(other_size), "defaults")
    assert tune.tuned_train_config(store, other_size) == defaults
    _write_tuned(store, settings, params={"lr": -1.0})
    with pytest.raises(ValueError, match="trainer_config.json does not fit the trainer: lr: Input"):
        tune.tuned_train_config(store, settings)


def _tick(instance, overrides: dict):
    """One evaluation of the retune sensor, with the settings of these overrides."""
    settings = SettingsResource(overrides=format_overrides(overrides))
    resources = {"settings": settings, "store": StoreResource(settings=settings)}
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        return retune_on_new_inputs(ctx)


# A new class list needs a new dataset name (a dataset's class indices never change meaning).
NEW_CLASSES = {"classes": ["car", "person", "bike"], "dataset.name": "perception-3"}


@pytest.mark.parametrize("change", [{"image_size": 48}, NEW_CLASSES])
def test_sensor_requests_a_tune_run_when_classes_or_image_size_changed(tmp_path, change):
    root = str(tmp_path / "store")
    store = open_store(root)
    before = {"store.root": root, "image_size": 32}
    after = {**before, **change}
    settings = load_settings(**after)
    with dg.instance_for_test() as instance:
        assert "no tuned config yet" in _tick(instance, after).skip_message
        _write_tuned(store, load_settings(**before))
        assert "has the settings' class list and image size" in _tick(instance, before).skip_message
        assert "has no version with these classes yet" in _tick(instance, after).skip_message
        manifest = {"version": 1, "classes": settings.classes}
        store.write_json(layout.manifest_key(settings.dataset.name, 1), manifest)
        first, again = _tick(instance, after), _tick(instance, after)
    assert isinstance(first, dg.RunRequest) and first.tags["flywheel/kind"] == "training"
    # one run per change: the same run key until a tune run replaces the config
    assert first.run_key == again.run_key == f"{tune.study_name(settings)}:after:run-1"


def _write_check(store, settings, *, short: bool, at: str, version: str = "4") -> None:
    """A challenger-vs-baseline check as `stages.train_challenger` writes it."""
    check = {"metric": "macro_f1", "challenger": 0.41 if short else 0.9, "baseline": 0.62,
             "short": short, "model_version": version, "checked_at": at}  # fmt: skip
    store.write_json(layout.baseline_check_key(settings.dataset.name), check)


def test_sensor_requests_a_tune_run_when_the_challenger_is_short_of_the_baseline(tmp_path):
    root = str(tmp_path / "store")
    store, overrides = open_store(root), {"store.root": root}
    settings = load_settings(**overrides)
    with dg.instance_for_test() as instance:
        _write_check(store, settings, short=False, at="2026-11-02T03:00:00+00:00")
        assert "no tuned config yet" in _tick(instance, overrides).skip_message
        _write_check(store, settings, short=True, at="2026-11-02T03:00:00+00:00")
        first = _tick(instance, overrides)  # short, and nothing tuned yet
        assert first.tags["flywheel/trigger"] == "short-of-baseline"
        assert first.run_key == f"{tune.study_name(settings)}:short-of-baseline:4"
        _write_tuned(store, settings, tuned_at="2026-11-02T04:00:00.5+00:00")  # a tune run came after
        assert "has the settings' class list and image size" in _tick(instance, overrides).skip_message
        _write_check(store, settings, short=True, at="2026-11-02T05:00:00+00:00", version="5")
        second = _tick(instance, overrides)  # the next challenger, still short: one more tune run
    assert second.run_key.endswith(":short-of-baseline:5") and second.run_key != first.run_key
