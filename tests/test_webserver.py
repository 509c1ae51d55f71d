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
