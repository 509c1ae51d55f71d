"""Fault injection: kill -9 at named points of an iteration, rerun, and check that nothing is stuck,
lost or half-visible. The S3 cases run behind a TCP proxy that the test cuts and restores.

Invariants after every rerun:
- no visible partial version: every dataset manifest's shards exist with their sha256, the
  deployed manifest's ONNX exists with its sha256;
- every uploaded clip is in exactly one of {a batch's frames, quarantine, pending};
- `current.json` and the MLflow `champion` alias name the same version;
- a second rerun changes nothing (no new batch, dataset version, model version or deploy).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.proxy import CuttableProxy

REPO = Path(__file__).resolve().parents[2]
TINY = """
sim: {frames_per_clip: 4, vehicles: 2, width: 48, height: 36}
image_size: 16
train: {epochs: 1, width: 4, depth: 1, batch_size: 32}
dataset: {golden_size: 8, split: {train: 0.5, val: 0.1, test: 0.4}}
sensor: {ingest_retry_s: 0}
tune: {baseline_epochs: 0}
"""
GATE = "gate: {floor: 0.0}\n"
FORCED = "gate: {floor: 0.0, margin: -1.0, min_slice_frames: 1000, critical_slices: []}\n"  # every challenger passes: each one deploys
ENGINE = "engine: {enabled: true, label_budget: 8}\n"

INGEST_POINTS = ["batch_committed", "clip_claimed", "quarantine_reason_written", "frames_staged", "accepted_written", "frames_written",
                 "labels_written", "augmented_written"]  # fmt: skip
# An iterate killed at each point of a chain in turn: each rerun recovers from the kill before it and is killed
# at the next point, later in the iteration; the first chain on the first iteration, the second on top of a
# deployed first iteration (the move from one dataset version and champion to the next).
TRAIN_CHAINS = {"first": ["golden_written", "evaluation_written", "onnx_written", "deploy_manifest_written"],
                "second": ["dataset_shard_written", "dataset_manifest_written", "current_moved", "champion_alias_moved"]}  # fmt: skip


def killed_at(point: str, *args: str, home: Path, config: Path, timeout: float = 600, sig: str = "KILL"):
    """`flywheel <args>` in a child process that gets signal `sig` (default: SIGKILL) right after `point`."""
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "FLYWHEEL_CONFIG": str(config), "PYTHONPATH": str(REPO),
           "FLYWHEEL_FAULT_SIGNAL": sig}  # fmt: skip
    env.pop("DAGSTER_HOME", None)
    return subprocess.run([sys.executable, "-m", "tests.faults.driver", point, *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def flywheel(*args: str) -> None:
    """`flywheel <args>` in this process (FLYWHEEL_HOME and FLYWHEEL_CONFIG set by the test); must succeed."""
    from click.testing import CliRunner

    from flywheel.cli import main

    out = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert out.exit_code == 0, out.output


@pytest.fixture(scope="session")
def template_home(tmp_path_factory) -> Path:
    """A home whose Dagster instance and MLflow database exist already: each test copies it rather
    than paying for both schemas' creation."""
    home = tmp_path_factory.mktemp("template") / "home"
    home.mkdir()
    code = ("from flywheel.cli import Ctx; from flywheel.config import load_settings; "
            "from mlflow.tracking import MlflowClient; s = load_settings(); Ctx(None, {}).instance(); "
            "MlflowClient(s.tracking_uri).search_experiments()")  # fmt: skip
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("DAGSTER_HOME", None)
    env.pop("FLYWHEEL_CONFIG", None)
    (home / "mlflow").mkdir()
    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True, timeout=300)
    (home / "mlflow" / "mlflow.db.ready").touch()
    return home


def snapshot(settings) -> dict:
    """What a rerun must not change: store objects (by content), model versions, the champion."""
    from flywheel.store import store_for
    from flywheel.tracking import CHAMPION, tracker_for

    store = store_for(settings)
    objects = {o.key: hashlib.sha256(store.read_bytes(o.key)).hexdigest() for o in store.list("")
               if not o.key.startswith(("dagster/", "mlflow/", "checkpoints/", "tune/"))}  # fmt: skip
    tracker = tracker_for(settings)
    versions = tracker.client.search_model_versions(f"name='{settings.mlflow.model_name}'")
    return {"objects": objects, "model_versions": len(versions), "champion": tracker.alias(CHAMPION)}


def check_invariants(settings, uploaded: set[str]) -> None:
    from flywheel import ingest, layout
    from flywheel.data import dataset
    from flywheel.deployment import deploy
    from flywheel.report import quarantined
    from flywheel.store import store_for
    from flywheel.tracking import CHAMPION, tracker_for

    store = store_for(settings)
    name = settings.dataset.name
    latest = dataset.latest_version(store, name) or 0
    for v in range(1, latest + 1):
        m = dataset.load_manifest(store, name, v)
        assert dataset.verify_shards(store, m) == [], f"dataset v{v} has shards that do not match"
    cur = deploy.current(store, settings.mlflow.model_name)
    if cur is not None:
        m = store.read_json(cur["manifest"])
        data = store.read_bytes(m["onnx"]["key"])
        assert hashlib.sha256(data).hexdigest() == m["onnx"]["sha256"] == cur["onnx_sha256"]
    alias = tracker_for(settings).alias(CHAMPION)
    assert (cur["version"] if cur else None) == (f"v{alias}" if alias else None), "current.json and alias disagree"
    in_frames: list[str] = []
    for b in ingest.list_batches(store):
        if store.exists(layout.frames_key(b["batch_id"])):
            in_frames += store.read_parquet(layout.frames_key(b["batch_id"]), columns=["clip_key"]).column(0).unique().to_pylist()
    held = {"frames": in_frames, "quarantine": [q["key"] for q in quarantined(store)],
            "pending": [o.key for o in ingest.pending_clips(store)]}  # fmt: skip
    for key in uploaded:
        where = [k for k, keys in held.items() for x in keys if x == key]
        assert len(where) == 1, f"{key} is in {where or 'nowhere'}"


def _setup(home: Path, template: Path, monkeypatch, extra: str = GATE, *, clips: int = 6, bad_clip: bool = False):
    """A fresh home (the `flywheel_home` fixture, FLYWHEEL_HOME here) from the template, with clips in landing."""
    shutil.copytree(template, home, dirs_exist_ok=True)
    config = home.parent / "flywheel.yaml"
    config.write_text(TINY + extra)
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(config))
    from flywheel.config import load_settings
    from flywheel.sim import simulate
    from flywheel.store import store_for

    settings = load_settings(config)
    simulate(store_for(settings), settings, clips=clips, seed=0)
    if bad_clip:  # a clip that quarantines: the quarantine points are reached
        (home / "landing" / "v9" / "2026-01-01").mkdir(parents=True)
        (home / "landing" / "v9" / "2026-01-01" / "broken.mcap").write_bytes(b"not an mcap file")
    uploaded = {str(p.relative_to(home)) for p in (home / "landing").rglob("*.mcap")}
    return home, config, settings, uploaded


def _rerun_twice(settings, uploaded, *command: str):
    flywheel(*command)
    check_invariants(settings, uploaded)
    before = snapshot(settings)
    flywheel(*command)
    check_invariants(settings, uploaded)
    after = snapshot(settings)
    changed = sorted(k for k in before["objects"].keys() | after["objects"].keys()
                     if before["objects"].get(k) != after["objects"].get(k))  # fmt: skip
    assert not changed, f"a second rerun changed {changed}"
    assert after == before, "a second rerun changed the model versions or the champion"


@pytest.mark.parametrize("point", INGEST_POINTS)
def test_kill_during_ingest_then_rerun(point, flywheel_home, template_home, monkeypatch):
    """`flywheel ingest` (what `iterate` does first: the ingest_batch job, raw clips to augmented)
    killed at each of its writes; the training points below kill a whole `iterate`."""
    home, config, settings, uploaded = _setup(flywheel_home, template_home, monkeypatch,
                                              bad_clip=point == "quarantine_reason_written")  # fmt: skip
    killed = killed_at(point, "ingest", "--min-clips", "1", home=home, config=config)
    assert killed.returncode == -signal.SIGKILL, f"{point} was not reached: {killed.stdout}{killed.stderr}"
    _rerun_twice(settings, uploaded, "ingest", "--min-clips", "1")


def test_kill_while_writing_the_human_queue_then_rerun(flywheel_home, template_home, monkeypatch):
    home, config, settings, uploaded = _setup(flywheel_home, template_home, monkeypatch, GATE + ENGINE)
    killed = killed_at("queue_written", "ingest", "--min-clips", "1", home=home, config=config)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    _rerun_twice(settings, uploaded, "ingest", "--min-clips", "1")


@pytest.mark.parametrize("iteration", TRAIN_CHAINS)
@pytest.mark.slow
def test_kills_during_training_and_deploy_then_reruns(iteration, flywheel_home, template_home, monkeypatch):
    home, config, settings, uploaded = _setup(flywheel_home, template_home, monkeypatch, FORCED)
    if iteration == "second":
        flywheel("iterate")
        from flywheel.sim import simulate
        from flywheel.store import store_for

        simulate(store_for(settings), settings, clips=6, seed=1)
        uploaded = {str(p.relative_to(home)) for p in (home / "landing").rglob("*.mcap")}
    for point in TRAIN_CHAINS[iteration]:
        killed = killed_at(point, "iterate", home=home, config=config)
        assert killed.returncode == -signal.SIGKILL, f"{point} was not reached: {killed.stdout}{killed.stderr}"
    _rerun_twice(settings, uploaded, "iterate")


def test_a_stopped_iterate_says_it_was_interrupted_and_a_rerun_finishes(flywheel_home, template_home, monkeypatch):
    """kill (SIGTERM) while the evaluation is written: exit status 130 and one line naming the step."""
    home, config, settings, uploaded = _setup(flywheel_home, template_home, monkeypatch, FORCED)
    stopped = killed_at("evaluation_written", "iterate", home=home, config=config, sig="TERM")
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert "was interrupted (evaluation: interrupted by Ctrl-C or a stop signal)" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    _rerun_twice(settings, uploaded, "iterate")


@pytest.fixture
def s3_behind_proxy(s3_endpoint):
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = CuttableProxy((host, int(port)))
    yield proxy
    proxy.cut()


@pytest.mark.slow
def test_s3_link_cut_mid_iteration_then_restored(flywheel_home, template_home, monkeypatch, s3_endpoint,
                                                s3_behind_proxy):  # fmt: skip
    """The store's link dies while an iteration runs; restored, a rerun finishes the job."""
    import boto3

    bucket = f"faults-{os.getpid()}-{int(time.time())}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    extra = GATE + f"store: {{root: 's3://{bucket}/fw', endpoint_url: '{s3_behind_proxy.url}'}}\n"
    home, config, settings, _ = _setup(flywheel_home, template_home, monkeypatch, extra)
    from flywheel.store import open_store

    direct = open_store(f"s3://{bucket}/fw", endpoint_url=s3_endpoint)
    uploaded = {o.key for o in direct.list("landing/")}
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "FLYWHEEL_CONFIG": str(config), "PYTHONPATH": str(REPO)}
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.Popen([sys.executable, "-m", "flywheel.cli", "iterate"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not direct.list("frames/") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    s3_behind_proxy.cut()  # mid-ingest: frames are written, labels and the rest are not
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out  # a clear line, not a stack
    s3_behind_proxy.restore()
    _rerun_twice(settings, uploaded, "iterate")
