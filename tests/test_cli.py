"""The command line as a user runs it: a fresh FLYWHEEL_HOME, real Dagster runs in its instance."""

import json
import os
import re
import socket
import subprocess
import sys

import click
import dagster as dg
import pytest
from click.testing import CliRunner

from flywheel import recovery
from flywheel.cli import Ctx, main, run_iteration
from flywheel.config import load_settings
from flywheel.tracking import tracker_for
from jobs import TRAINING_TAGS
from tests.conftest import free_port

SMALL = """
sim: {frames_per_clip: 4}
image_size: 32
train: {epochs: 1, width: 8, depth: 1, batch_size: 32}
dataset: {golden_size: 10, split: {train: 0.5, val: 0.1, test: 0.4}}
"""
GATE = "gate: {floor: 0.0, min_slice_frames: 1000}\n"


def flywheel(*args, home, config=None, check=True):
    env = {**os.environ, "FLYWHEEL_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    env.pop("FLYWHEEL_CLI", None)  # as a user who installed flywheel, not through ./dev
    if config:
        env["FLYWHEEL_CONFIG"] = str(config)
    out = subprocess.run([sys.executable, "-m", "flywheel.cli", *args], env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def flywheel_here(*args, home, config=None) -> str:
    """The stdout of a command that runs no job, run in this process with the environment `flywheel` gives
    its process (what the command sets, DAGSTER_HOME, is undone after it): the same click `main`, without
    a process whose imports take longer than what the command does."""
    env = {"FLYWHEEL_HOME": str(home), "DAGSTER_HOME": None, "FLYWHEEL_CLI": None,
           "FLYWHEEL_CONFIG": str(config) if config else None}  # fmt: skip
    out = CliRunner(env=env).invoke(main, list(args), catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return out.stdout


def test_bad_config_names_file_and_field(tmp_path, flywheel_home):
    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text("train: {epochs: 0}\nnot_a_key: 1\n")
    out = flywheel("status", home=flywheel_home, config=cfg, check=False)
    assert out.returncode != 0
    assert str(cfg) in out.stderr and "train.epochs" in out.stderr and "not_a_key" in out.stderr


def test_simulate_ingest_status(tmp_path, flywheel_home, monkeypatch):
    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text(SMALL + GATE)
    flywheel("simulate", "--clips", "5", home=flywheel_home, config=cfg)
    below = flywheel("ingest", home=flywheel_home, config=cfg)
    assert "sensor skipped" in below.stdout and "5 new clip(s)" in below.stdout
    fired = flywheel("ingest", "--min-clips", "5", home=flywheel_home, config=cfg)
    assert "ingest succeeded" in fired.stdout
    assert "validate:" in fired.stderr  # a bar of the clips read (once: the frames step parses nothing again)
    status = json.loads(flywheel("status", "--json", home=flywheel_home, config=cfg).stdout)
    assert len(status["batches"]) == 1 and status["frames"] == 20 and status["pending_clips"] == 0
    assert status["champion"] is None
    # the run is recorded in the instance the UI reads
    monkeypatch.setenv("DAGSTER_HOME", str(flywheel_home / "dagster"))
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert [r.job_name for r in runs] == ["ingest_batch"]
        assert runs[0].status == dg.DagsterRunStatus.SUCCESS
        assert instance.get_dynamic_partitions("fleet_batches") == [status["batches"][0]["batch_id"]]


@pytest.mark.slow
def test_demo_end_to_end_then_rollback(tmp_path, flywheel_home):
    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text(SMALL + "gate: {floor: 0.0, margin: -1.0, min_slice_frames: 1000, critical_slices: []}\n"
                   "eval: {fixed_set_min_frames: 4}\n")  # fmt: skip
    out = flywheel("demo", "--iterations", "2", "--clips", "8", home=flywheel_home, config=cfg)
    assert "iteration 2/2" in out.stdout and "2 deployed" in out.stdout
    assert "training: 1 epochs per challenger, no yardstick check (the demo's budget" in out.stdout
    # the closing lines name commands that work where the user stands
    assert f"  FLYWHEEL_HOME={flywheel_home} flywheel ui " in out.stdout
    rows = json.loads((flywheel_home / "demo.json").read_text())
    assert [r["dataset_version"] for r in rows] == [1, 2]
    # the champion's auto labels against the clips' hidden ground truth (none before a champion exists)
    assert rows[0]["auto_labels"] == {"compared": 0, "correct": 0, "accuracy": None}
    second = rows[1]["auto_labels"]
    assert 0 <= second["correct"] <= second["compared"] and (second["accuracy"] is None) == (second["compared"] == 0)
    assert (flywheel_home / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # each deployed model on the fixed held-out set, frozen from v1: per iteration, then as one curve
    n = rows[0]["fixed_frames"]
    assert n >= 4 and [(r["fixed_frames"], r["fixed_from_version"]) for r in rows] == [(n, 1), (n, 1)]
    scores = [r["fixed_deployed"] for r in rows]
    assert scores == [r["fixed_challenger"] for r in rows] and all(0 <= s <= 1 for s in scores)  # both deployed
    line1, line2 = [ln for ln in out.stdout.splitlines() if ln.startswith("  macro_f1 on the fixed held-out set")]
    on_fixed = f"  macro_f1 on the fixed held-out set (n={n}, frozen from dataset v1): deployed"
    assert line1 == f"{on_fixed} v1 {scores[0]:.3f} | challenger {scores[0]:.3f} vs champion -"  # a first model
    assert line2.startswith(f"{on_fixed} v2 {scores[1]:.3f} | challenger {scores[1]:.3f} vs champion 0.")
    curve = " -> ".join(f"{s:.3f}" for s in scores)
    assert f"deployed model's macro_f1 on the fixed held-out set (n={n}), per iteration: {curve}" in out.stdout
    status = json.loads(flywheel("status", "--json", home=flywheel_home, config=cfg).stdout)
    assert status["champion"]["version"] == "v2" and status["dataset_version"] == 2
    assert "champion v2 -> v1" in flywheel("rollback", home=flywheel_home, config=cfg).stdout
    assert json.loads(flywheel("status", "--json", home=flywheel_home, config=cfg).stdout)["champion"]["version"] == "v1"
    again = flywheel("rollback", home=flywheel_home, config=cfg, check=False)
    assert again.returncode != 0 and "Error" in again.stderr


@pytest.mark.slow
def test_detection_demo_turns_the_loop_on_boxes_and_deploys_a_detector(tmp_path, flywheel_home):
    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text(SMALL + "gate: {margin: -1.0, min_slice_frames: 1000, critical_slices: []}\n"
                   "detection: {steps: 8, batch_size: 8, yardstick_steps: 4, floor: 0.0}\neval: {fixed_set_min_frames: 4}\n")  # fmt: skip
    out = flywheel("demo", "--task", "detection", "--iterations", "2", "--clips", "8", home=flywheel_home, config=cfg)
    assert "training: a CenterNet detector, 8 steps of 8 frames per challenger, yardstick detector 4 steps\n" in out.stdout
    assert "iteration 2/2" in out.stdout and "2 deployed" in out.stdout and "| map50: challenger v2" in out.stdout
    assert "; critical slices: none\n" in out.stdout  # the config's gate, with no critical slice, said so
    rows = json.loads((flywheel_home / "demo.json").read_text())
    assert [r["dataset_version"] for r in rows] == [1, 2] and {r["metric"] for r in rows} == {"map50"}
    assert rows[0]["labels_spent"] > 0  # the simulated team drew the boxes of the queued frames
    assert all(0 <= r["challenger"] <= 1 for r in rows) and rows[1]["champion"] is not None
    assert (flywheel_home / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    status = json.loads(flywheel_here("status", "--json", home=flywheel_home, config=cfg))
    assert status["champion"]["version"] == "v2" and set(status["champion"]["metrics"]) == {"map50", "map"}
    # in the UI: the evaluation's per-class mAP and a grid of true and predicted boxes, the challenger's yardstick
    import dagster as dg

    with dg.DagsterInstance.from_config(str(flywheel_home / "dagster")) as instance:
        meta = instance.get_latest_materialization_event(dg.AssetKey("evaluation")).asset_materialization.metadata
        assert "| vehicle |" in meta["per_class"].value and "condition=" in meta["per_slice"].value
        assert meta["predicted_boxes"].value.startswith("![predicted_boxes](data:image/png;base64,")
        assert meta["map50"].value == rows[1]["challenger"]
        trained = instance.get_latest_materialization_event(dg.AssetKey("challenger")).asset_materialization.metadata
        table = trained["vs_yardstick_detector (val mAP@.5)"].value
        assert "| verdict |" in table and "| untrained |" in table, table  # the plain detector and the floor it beat


def test_a_failed_ingest_says_where_and_is_retried(tmp_path, flywheel_home, monkeypatch):
    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text(SMALL + GATE + "sensor: {ingest_retry_s: 0}\n")
    flywheel("simulate", "--clips", "3", home=flywheel_home, config=cfg)
    (flywheel_home / "frames").write_text("a file where the folder goes")  # the frames step fails
    failed = flywheel("ingest", "--min-clips", "3", home=flywheel_home, config=cfg, check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stdout + failed.stderr
    [line] = [x for x in failed.stdout.splitlines() if "ingest FAILED" in x]
    assert " in frames: " in line and "Error" in line, line  # the step and its error's first line
    (flywheel_home / "frames").unlink()
    retried = flywheel("ingest", home=flywheel_home, config=cfg)
    assert re.search(r"batch (\S+): ingest succeeded \(\1:retry-1\)", retried.stdout), retried
    monkeypatch.setenv("DAGSTER_HOME", str(flywheel_home / "dagster"))
    with dg.DagsterInstance.get() as instance:
        statuses = [r.status for r in reversed(instance.get_runs())]
    assert statuses == [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS]


def _started_training_run(instance, process: dict) -> dg.DagsterRun:
    """A training run left STARTED by the process that `process` tags name."""
    return instance.add_run(dg.DagsterRun(job_name="train_and_deploy", status=dg.DagsterRunStatus.STARTED,
                                          tags={**TRAINING_TAGS, **process}))  # fmt: skip


def test_a_killed_iterate_does_not_block_the_next_but_a_live_one_does(flywheel_home, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(flywheel_home / "dagster"))
    (flywheel_home / "dagster").mkdir()
    obj = Ctx(None, {})
    instance = obj.instance()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = {recovery.HOST_TAG: socket.gethostname(), recovery.PID_TAG: str(dead.pid)}
    orphan = _started_training_run(instance, gone)
    with pytest.raises(click.ClickException) as went_on:
        run_iteration(obj)  # it trains: on an empty store, that fails, but not for the orphan
    assert "in progress" not in went_on.value.message and "the iteration (run" in went_on.value.message
    assert instance.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.FAILURE
    live = _started_training_run(instance, recovery.process_tags())
    with pytest.raises(click.ClickException, match=f"in progress \\({live.run_id}\\)"):
        run_iteration(obj)
    assert instance.get_run_by_id(live.run_id).status == dg.DagsterRunStatus.STARTED


OPEN_BOTH = """
from flywheel.cli import Ctx
from flywheel.tracking import tracker_for
obj = Ctx(None, {})
obj.instance().get_runs()
tracker_for(obj.settings)
"""


def test_first_commands_on_a_fresh_home_do_not_race(flywheel_home, monkeypatch):
    env = {**os.environ, "FLYWHEEL_HOME": str(flywheel_home)}
    env.pop("DAGSTER_HOME", None)
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_BOTH], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]  # fmt: skip
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(errors)
    # Both stores work after: a run is recorded, a tracking run is created.
    monkeypatch.setenv("DAGSTER_HOME", str(flywheel_home / "dagster"))
    with dg.DagsterInstance.get() as instance:
        assert dg.materialize([dg.asset(name="probe")(lambda: 1)], instance=instance).success
        assert len(instance.get_runs()) == 1
    tracker = tracker_for(load_settings())
    with tracker.run("probe") as run_id:
        assert tracker.client.get_run(run_id).info.experiment_id == tracker.experiment_id


@pytest.mark.parametrize("command", ["status", "ingest"])
def test_an_unreachable_s3_endpoint_is_one_line(tmp_path, flywheel_home, command):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text(f"store: {{root: 's3://fleet/flywheel', endpoint_url: '{endpoint}'}}\n")
    out = flywheel(command, home=flywheel_home, config=cfg, check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"Error: cannot reach the S3 endpoint {endpoint} (store.endpoint_url, else AWS_ENDPOINT_URL): "
        "is the server up and the address right?"
    ]


def test_printed_commands_are_spelled_as_the_user_started(monkeypatch):
    from flywheel.cli import command

    monkeypatch.delenv("FLYWHEEL_HOME", raising=False)
    monkeypatch.setenv("FLYWHEEL_CLI", "./dev")  # what ./dev exports
    assert command("ui") == "./dev ui"
    monkeypatch.delenv("FLYWHEEL_CLI")
    monkeypatch.setenv("FLYWHEEL_HOME", "/data/fw")
    assert command("status") == "FLYWHEEL_HOME=/data/fw flywheel status"


def test_approve_without_a_challenger_says_so(tmp_path, flywheel_home):
    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text(SMALL + "gate: {require_approval: true}\n")
    out = flywheel("approve", "v3", "--by", "alice", "--reason", "checked", home=flywheel_home, config=cfg, check=False)
    assert out.returncode == 1 and "approving v3 (run " in out.stderr and "has no challenger" in out.stderr


def test_force_without_a_challenger_says_so_and_nothing_is_recorded(tmp_path, flywheel_home):
    out = flywheel("force", "v3", "--reason", "hotfix", home=flywheel_home, check=False)
    assert out.returncode == 1 and "has no challenger" in out.stderr
    assert not (flywheel_home / "forces").exists()


def test_the_turn_line_names_the_yardstick_check_and_its_cost_where_it_was_kept():
    from flywheel.cli.driver import format_summary

    turn = {"gate_passed": True, "gate_reason": "", "fixed_frames": None, "fixed_note": "no fixed set yet",
            "dataset_version": 2, "frames": 100, "eval_frames": 20, "metric": "macro_f1", "challenger_version": "2",
            "challenger": 0.8, "champion": 0.7, "rare_slice": "condition=fog", "challenger_rare": None,
            "champion_rare": None, "deployed": "v2"}  # fmt: skip
    check = {"verdict": "short", "challenger": 0.61, "baseline": 0.72, "baseline_seconds": 9.2, "training_seconds": 59.4}
    line = format_summary({**turn, "yardstick": check})
    assert "yardstick CNN on val: short (challenger 0.610 vs CNN 0.720; 9 s against the training's 59 s)" in line
    older = format_summary({**turn, "yardstick": {**check, "baseline_seconds": None, "training_seconds": None}})
    assert "yardstick CNN on val: short (challenger 0.610 vs CNN 0.720)" in older
    assert "yardstick" not in format_summary({**turn, "yardstick": None})
