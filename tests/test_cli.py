"""The command line as a user runs it: a fresh FLYWHEEL_HOME, real Dagster runs in its instance."""

import json
import os
import subprocess
import sys

import dagster as dg

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
    if config:
        env["FLYWHEEL_CONFIG"] = str(config)
    out = subprocess.run([sys.executable, "-m", "flywheel.cli", *args], env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


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


def test_demo_end_to_end_then_rollback(tmp_path, flywheel_home):
    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text(SMALL + "gate: {floor: 0.0, min_slice_frames: 1000, force: true, force_reason: 'ci: demo smoke'}\n")
    out = flywheel("demo", "--iterations", "2", "--clips", "8", home=flywheel_home, config=cfg)
    assert "iteration 2/2" in out.stdout and "2 deployed" in out.stdout
    rows = json.loads((flywheel_home / "demo.json").read_text())
    assert [r["dataset_version"] for r in rows] == [1, 2]
    assert (flywheel_home / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    status = json.loads(flywheel("status", "--json", home=flywheel_home, config=cfg).stdout)
    assert status["champion"]["version"] == "v2" and status["dataset_version"] == 2
    assert "champion v2 -> v1" in flywheel("rollback", home=flywheel_home, config=cfg).stdout
    assert json.loads(flywheel("status", "--json", home=flywheel_home, config=cfg).stdout)["champion"]["version"] == "v1"
    again = flywheel("rollback", home=flywheel_home, config=cfg, check=False)
    assert again.returncode != 0 and "Error" in again.stderr
