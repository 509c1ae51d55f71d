"""Settings: values that would become bad store keys or URLs fail at load, naming the field and value."""

import re

import pytest

from flywheel.config import ConfigError, format_overrides, load_settings, parse_overrides


@pytest.mark.parametrize(
    "key, value, problem",
    [
        (
            "store.root",
            "http://minio:9000/fleet",
            "'http://minio:9000/fleet' is neither a folder nor s3://",
        ),
        ("store.root", "s3:///prefix", "names no bucket"),
        ("mlflow.model_name", "../x", "invalid model name '../x'"),
        ("dataset.name", "../../etc", "invalid dataset name '../../etc'"),
        ("dataset.name", "a/b", "invalid dataset name 'a/b'"),
        ("sensor.max_ingest_attempts", 0, "greater than or equal to 1"),
    ],
)
def test_bad_values_name_the_field_and_the_value(key, value, problem):
    with pytest.raises(ConfigError) as e:
        load_settings(**{key: value})
    assert f"{key}: " in str(e.value) and problem in str(e.value)
    assert "Value error," not in str(e.value)  # pydantic's prefix says nothing to a reader


@pytest.mark.parametrize(
    "root", ["s3://fleet", "s3://fleet/flywheel", "/data/flywheel", "relative/dir"]
)
def test_a_folder_or_s3_is_a_store_root(root):
    assert load_settings(**{"store.root": root}).store_root == root


def test_the_config_file_is_named(tmp_path):
    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text("mlflow: {model_name: ../x}\n")
    with pytest.raises(
        ConfigError, match=f"config file {cfg}: mlflow.model_name: invalid model name"
    ):
        load_settings(cfg)


def test_geometric_augmentation_is_opt_in_except_for_the_built_in_road_classes():
    assert load_settings().geometric_aug  # a mirrored road scene keeps its classes
    own = ["left", "right"]
    assert not load_settings(classes=own).geometric_aug  # another task: only when it says so
    assert load_settings(classes=own, **{"augment.geometric": True}).geometric_aug
    assert not load_settings(**{"augment.geometric": False}).geometric_aug


@pytest.mark.parametrize(
    ("key", "url", "env"),
    [
        ("tune.storage", "postgresql+psycopg2://optuna:hunter2@db:5432/optuna", "PGPASSWORD"),
        ("mlflow.tracking_uri", "https://alice:hunter2@mlflow.internal", "MLFLOW_TRACKING_PASSWORD"),
        ("store.endpoint_url", "http://key:hunter2@127.0.0.1:9000", "AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_a_password_in_a_settings_url_is_refused_without_repeating_it(key, url, env):
    # settings go to MLflow params, the training command line and pod specs: they must hold no secret
    with pytest.raises(ConfigError, match=rf"{key} holds a password.*{env}") as e:
        load_settings(**{key: url})
    assert "hunter2" not in str(e.value)


def test_a_url_with_a_user_and_no_password_is_fine():
    s = load_settings(**{"tune.storage": "postgresql+psycopg2://postgres@127.0.0.1:5432/optuna"})
    assert s.tune.storage.startswith("postgresql+psycopg2://postgres@")


def test_overrides_have_one_spelling_a_dotted_key_and_a_yaml_value():
    items = ["train.epochs=2", "store.root=s3://b/p", "train.device=cpu", "gate.critical_slices=[class=*]"]
    parsed = parse_overrides(items)
    assert parsed == {"train.epochs": 2, "store.root": "s3://b/p", "train.device": "cpu",
                      "gate.critical_slices": ["class=*"]}  # fmt: skip
    assert parse_overrides(format_overrides(parsed)) == parsed  # a resource's config reads back the same
    assert parse_overrides({"train.epochs": "2", "train.device": '"cpu"'}) == {"train.epochs": 2, "train.device": "cpu"}
    for bad in ("train.epochs", "=2"):
        with pytest.raises(ConfigError, match=re.escape(repr(bad))):
            parse_overrides([bad])
    with pytest.raises(ConfigError, match="train.lr"):
        parse_overrides(["train.lr=[1"])
    assert load_settings(None, **parsed).train.epochs == 2


def test_a_step_validates_its_settings_once_for_all_its_resources(flywheel_home, monkeypatch):
    import dagster as dg

    import resources

    calls = []
    monkeypatch.setattr(resources, "load_settings", lambda *a, **k: calls.append(a) or load_settings(*a, **k))
    resources._validated.cache_clear()

    @dg.asset
    def uses_all(settings: resources.SettingsResource, store: resources.StoreResource,
                 mlflow: resources.MlflowResource, compute: resources.ComputeResource) -> None:  # fmt: skip
        assert settings.load() is mlflow.settings.load() and settings.load().train.epochs == 3
        store.open(), compute.device

    res = resources.resources_for(None, {"train.epochs": 3})
    with dg.instance_for_test() as instance:
        assert dg.materialize([uses_all], resources=res, instance=instance).success
    assert len(calls) == 1
    (flywheel_home / "flywheel.yaml").write_text("train: {epochs: 5}\n")  # an edited file is read again
    assert resources.SettingsResource(config_path=str(flywheel_home / "flywheel.yaml")).load().train.epochs == 5
    assert len(calls) == 2
