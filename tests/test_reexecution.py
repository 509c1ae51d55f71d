"""Runs the command line started are runs the UI can re-execute: `flywheel iterate` fails in its
training step (its config asks for a Kubernetes pod it cannot have), then the UI (`flywheel ui`:
webserver and daemon, with a config that trains in a subprocess) re-executes that run from failure
and the ingest run with all steps, through the webserver's GraphQL as its buttons do. A second
batch's ingest is killed (-9): `flywheel status` says it failed and when the sensor retries it,
and a run of its partition launched from the UI completes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from flywheel.cli import main
from tests.conftest import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[1]

SMALL = """
sim: {frames_per_clip: 4, width: 48, height: 36}
image_size: 16
train: {epochs: 1, width: 4, depth: 1, batch_size: 32}
dataset: {golden_size: 8, split: {train: 0.5, val: 0.1, test: 0.4}}
tune: {baseline_epochs: 0}
deploy: {int8: false}
gate: {floor: 0.0}
"""
UI_SENSORS = "sensor: {ingest_retry_s: 3600, min_clips: 100000, min_new_frames: 100000}\n"  # the sensors stay out of it
RUNS = """query($job: String!) { runsOrError(filter: {pipelineName: $job}) { ... on Runs { results {
    runId status tags { key value } } } } }"""
RUN = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""
REEXECUTE = """mutation($parent: String!, $strategy: ReexecutionStrategy!) {
  launchPipelineReexecution(reexecutionParams: {parentRunId: $parent, strategy: $strategy}) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidStepError { invalidStepKey } ... on InvalidSubsetError { message } } }"""


LAUNCH = """mutation($batch: String!) { launchRun(executionParams: {
    selector: {repositoryLocationName: "flywheel.definitions", repositoryName: "__repository__", jobName: "ingest_batch"},
    runConfigData: "{}", executionMetadata: {tags: [{key: "dagster/partition", value: $batch}]}}) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""


def _graphql(port: int, query: str, **variables) -> dict:
    body = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables}, timeout=60).json()
    assert "errors" not in body, body
    return body["data"]


def _runs(port: int, job: str) -> list[dict]:
    return _graphql(port, RUNS, job=job)["runsOrError"].get("results", [])


def _reexecute(port: int, parent: str, strategy: str) -> dict:
    return _graphql(port, REEXECUTE, parent=parent, strategy=strategy)["launchPipelineReexecution"]


def _wait(port: int, *launched: dict, timeout: float = 420.0) -> list[str]:
    """The final status of each launched run (runs launched together run side by side)."""
    for launch in launched:
        assert launch["__typename"] == "LaunchRunSuccess", launch
    run_ids, deadline = [launch["run"]["runId"] for launch in launched], time.monotonic() + timeout
    while True:
        statuses = [_graphql(port, RUN, id=run_id)["runOrError"]["status"] for run_id in run_ids]
        if all(s in ("SUCCESS", "FAILURE", "CANCELED") for s in statuses) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.5)


@pytest.mark.slow
def test_the_ui_re_executes_runs_the_command_line_started(tmp_path, flywheel_home):
    home = flywheel_home
    ui_cfg, cli_cfg = tmp_path / "ui.yaml", tmp_path / "cli.yaml"
    ui_cfg.write_text(SMALL + UI_SENSORS)
    cli_cfg.write_text(SMALL + "compute: {launcher: k8s, k8s_image: flywheel:none}\n")  # no cluster here: training fails
    env = {**os.environ, "FLYWHEEL_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    env.pop("FLYWHEEL_CONFIG", None)

    def cli(*args, config=cli_cfg):
        return subprocess.run([sys.executable, "-m", "flywheel.cli", "--config", str(config), *args], env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip

    def here(*args, config=cli_cfg) -> str:
        """The stdout of a command that runs no job, run in this process: click's same `main`, with the
        environment `cli` gives (what the command sets there, DAGSTER_HOME, is undone after it), without
        a process of its own whose imports take longer than what the command does."""
        runner = CliRunner(env={"FLYWHEEL_HOME": str(home), "DAGSTER_HOME": None, "FLYWHEEL_CONFIG": None})
        result = runner.invoke(main, ["--config", str(config), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    here("simulate", "--clips", "12")
    failed = cli("iterate")
    assert failed.returncode == 1 and "the iteration (run " in failed.stderr, failed.stdout + failed.stderr
    # a second batch whose ingest dies with its frames written, labels not yet
    here("simulate", "--clips", "6")
    killed = subprocess.run([sys.executable, "-m", "tests.faults.driver", "frames_written", "--config", str(cli_cfg),
                             "ingest", "--min-clips", "1"], env={**env, "PYTHONPATH": str(REPO)}, cwd=REPO,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    before = json.loads(here("status", "--json", config=ui_cfg))
    second = before["batches"][1]
    assert second["frames"] > 0 and second["ingest"]["state"] == "waiting", second  # frames, yet not done
    assert second["ingest"]["failures"] == 1 and "process" in second["ingest"]["error"]
    assert "the sensor retries it at" in here("status", config=ui_cfg)

    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "flywheel.cli", "--config", str(ui_cfg), "ui", "--port", str(port)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_for_port(port, timeout=180, proc=ui)
        deadline, training = time.monotonic() + 120, []
        while time.monotonic() < deadline:  # the code location may still be loading
            try:
                training = _runs(port, "train_and_deploy")
            except (AssertionError, KeyError, requests.RequestException):
                pass
            if training:
                break
            time.sleep(0.5)
        [run] = training
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert run["status"] == "FAILURE" and tags["user"] and tags["flywheel/trigger"] == "cli"  # "Launched by"
        # from failure: the dataset step is not run again, training and the rest are, with the UI's config
        assert _wait(port, _reexecute(port, run["runId"], "FROM_FAILURE")) == ["SUCCESS"]
        [ingest] = [r for r in _runs(port, "ingest_batch") if r["status"] == "SUCCESS"]
        # the ingest run with all steps and, beside it (the run queue runs ingest runs side by side), the
        # killed batch: a run of its partition, as the job's launchpad starts one
        assert _wait(port, _reexecute(port, ingest["runId"], "ALL_STEPS"),
                     _graphql(port, LAUNCH, batch=second["batch_id"])["launchRun"]) == ["SUCCESS", "SUCCESS"]  # fmt: skip
    finally:
        ui.send_signal(signal.SIGINT)
        out, _ = ui.communicate(timeout=120)
    after = json.loads(here("status", "--json", config=ui_cfg))
    assert after["champion"]["version"] == "v1", out
    assert [b["ingest"]["state"] for b in after["batches"]] == ["done", "done"]
