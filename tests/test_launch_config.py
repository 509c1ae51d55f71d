"""A run's launch-time config (the UI's launchpad, GraphQL) may change the training knobs only: a
run that sets gate.force, store.root or another config file is refused before any step works."""


import dagster as dg
import pytest

from flywheel.config import format_overrides, load_settings
from flywheel.definitions import build_definitions
from resources import check_launch_config


def _settings_config(**overrides) -> dict:
    return {"resources": {"settings": {"config": {"overrides": format_overrides(overrides)}}}}


def test_the_allow_list():
    check_launch_config(None)
    check_launch_config(_settings_config(**{"train.epochs": 2, "tune.trials": 3}))
    with pytest.raises(dg.Failure, match=r"\['gate.force', 'gate.force_reason'\]"):
        check_launch_config(_settings_config(**{"gate.force": True, "gate.force_reason": "x: y", "train.epochs": 1}))
    with pytest.raises(dg.Failure, match=r"settings.config_path"):
        check_launch_config({"resources": {"settings": {"config": {"config_path": "/elsewhere/flywheel.yaml"}}}})


def test_a_run_launched_with_gate_force_is_refused(flywheel_home):
    settings = load_settings()
    defs = build_definitions(settings)
    forced = _settings_config(**{"gate.force": True, "gate.force_reason": "mallory: trust me"})
    result = defs.resolve_job_def("train_and_deploy").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), run_config=forced, raise_on_error=False
    )
    assert not result.success
    failures = [e for e in result.all_events if e.is_failure]
    assert failures and "gate.force" in str(failures[0].event_specific_data.error)
    assert not result.get_step_success_events()  # nothing ran
