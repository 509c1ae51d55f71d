"""Settings: values that would become bad store keys or URLs fail at load, naming the field and value."""

import pytest

from flywheel.config import ConfigError, load_settings


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
