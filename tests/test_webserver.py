"""The Dagster webserver serves the flywheel's asset graph over GraphQL on 127.0.0.1."""

import os
import subprocess
import sys
import time

import requests

from tests.conftest import free_port, wait_for_port


def test_webserver_lists_assets_over_graphql(flywheel_home):
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(flywheel_home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-m", "flywheel.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=120, proc=proc)
        query = "{ assetNodes { assetKey { path } groupName } }"
        deadline = time.monotonic() + 60
        while True:  # the code location may still be loading
            body = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=30).json()
            nodes = (body.get("data") or {}).get("assetNodes") or []
            if nodes or time.monotonic() > deadline:
                break
            time.sleep(1)
        keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
        assert {"raw_clips", "frames"} <= keys, body
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_runs_from_the_command_line_show_under_their_job_in_the_ui(flywheel_home, tmp_path):
    env = {**os.environ, "FLYWHEEL_HOME": str(flywheel_home)}
    env.pop("DAGSTER_HOME", None)  # the command line's instance: $FLYWHEEL_HOME/dagster
    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text("sim: {frames_per_clip: 2}\n")
    for args in (["simulate", "--clips", "2"], ["ingest", "--min-clips", "2"]):
        out = subprocess.run([sys.executable, "-m", "flywheel.cli", "--config", str(cfg), *args], env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-m", "flywheel.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env={**env, "DAGSTER_HOME": str(flywheel_home / "dagster"), "FLYWHEEL_CONFIG": str(cfg)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    query = """{ pipelineOrError(params: {pipelineName: "ingest_batch", repositoryName: "__repository__",
                 repositoryLocationName: "flywheel.definitions"}) { __typename ... on Pipeline { runs { runId status } } } }"""
    try:
        wait_for_port(port, timeout=120, proc=proc)
        deadline = time.monotonic() + 60
        while True:  # the code location may still be loading
            body = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=30).json()
            job = (body.get("data") or {}).get("pipelineOrError") or {}
            if job.get("__typename") == "Pipeline" or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert [r["status"] for r in job.get("runs", [])] == ["SUCCESS"], body  # the ingest run, under its job
    finally:
        proc.terminate()
        proc.wait(timeout=30)
