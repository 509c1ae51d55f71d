"""The Dagster UI in a real browser: after a `flywheel iterate` from the command line, headless
Chromium renders the run under its job, the gate's reason on the evaluation asset and the epoch
lines in the run's log.

The UI is a single-page app that fetches its data over GraphQL: only a browser shows whether what
the command line recorded reaches a person. `--dump-dom` with a virtual-time budget lets the page
finish its requests before the DOM is printed. Without /usr/bin/chromium the test skips, unless
FLYWHEEL_REQUIRE_BROWSER=1 (CI) makes that a failure.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests

from flywheel import layout
from flywheel.store import open_store
from tests.conftest import free_port, wait_for_port

CHROMIUM = Path("/usr/bin/chromium")
# The smallest iteration that trains, gates and deploys: a few frames, a few optimizer steps.
TINY = """
sim: {frames_per_clip: 2}
image_size: 16
train: {steps: 4, min_passes: 1, width: 4, depth: 1, batch_size: 16}  # a short run log: its first epoch line stays in view
tune: {baseline_epochs: 0}
deploy: {int8: false}
dataset: {golden_size: 4, split: {train: 0.5, val: 0.1, test: 0.4}}
gate: {floor: 0.0, min_slice_frames: 1000, resamples: 100}
"""
JOB_RUNS = """{ pipelineOrError(params: {pipelineName: "train_and_deploy", repositoryName: "__repository__",
               repositoryLocationName: "flywheel.definitions"}) { __typename ... on Pipeline { runs { runId status } } } }"""  # fmt: skip
WINDOW = (1280, 900)


def chromium() -> Path:
    """The browser, else a skip (a failure when FLYWHEEL_REQUIRE_BROWSER=1: CI installs it)."""
    if CHROMIUM.exists():
        return CHROMIUM
    why = f"{CHROMIUM} is not installed (apt-get install -y chromium)"
    if os.environ.get("FLYWHEEL_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{why}, and FLYWHEEL_REQUIRE_BROWSER=1 requires the browser test")
    pytest.skip(why)


class _Text(HTMLParser):
    """The visible text of an HTML document: its text nodes outside <script> and <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in ("script", "style"):
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden and data.strip():
            self.parts.append(data.strip())


def text_of(dom: str) -> str:
    parser = _Text()
    parser.feed(dom)
    return " ".join(parser.parts)


class Browser:
    """Headless Chromium with a profile of its own under `profile`."""

    def __init__(self, exe: Path, profile: Path):
        self.args = [str(exe), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--user-data-dir={profile}", "--virtual-time-budget=20000",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}"]  # fmt: skip

    def _run(self, *args: str) -> str:
        out = subprocess.run([*self.args, *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"chromium {args}: exit {out.returncode}\n{out.stderr[-3000:]}"
        return out.stdout

    def page(self, url: str, expect: str, tries: int = 4, screenshot: Path | None = None) -> tuple[str, str]:
        """(DOM, visible text) of `url` once the DOM or its text holds `expect`, or as it is after
        `tries` loads (the code location and the page's queries may still be loading). The text too:
        the DOM escapes what the page shows ("20 < 100 frames" in a gate reason is "20 &lt; 100" there).
        `screenshot`: a PNG of the page as its DOM was dumped, from the same load."""
        shot = [f"--screenshot={screenshot}"] if screenshot else []
        for i in range(tries):
            dom = self._run("--dump-dom", *shot, url)
            text = text_of(dom)
            if expect in dom or expect in text:
                break
            time.sleep(2 * (i + 1))
        return dom, text


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails on anything that is no PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_an_iteration_from_the_command_line_shows_in_the_browser(flywheel_home, tmp_path):
    browser = Browser(chromium(), tmp_path / "chromium-profile")
    env = {**os.environ, "FLYWHEEL_HOME": str(flywheel_home)}
    env.pop("DAGSTER_HOME", None)  # the command line's instance: $FLYWHEEL_HOME/dagster
    env.pop("FLYWHEEL_CLI", None)
    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text(TINY)
    for args in (["simulate", "--clips", "6"], ["iterate"]):
        out = subprocess.run([sys.executable, "-m", "flywheel.cli", "--config", str(cfg), *args], env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
    assert "epoch 1/" in out.stderr, out.stderr  # what the run log must show too
    evaluation = open_store(str(flywheel_home)).read_json(layout.evaluation_key("perception", "1"))
    reason = evaluation["gate"]["reason"]  # the gate's decision on challenger v1

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-m", "flywheel.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env={**env, "DAGSTER_HOME": str(flywheel_home / "dagster"), "FLYWHEEL_CONFIG": str(cfg)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=120, proc=proc)

        def graphql(query: str) -> dict:
            return requests.post(f"{base}/graphql", json={"query": query}, timeout=30).json()

        deadline = time.monotonic() + 60
        while True:  # the code location may still be loading
            body = graphql(JOB_RUNS)
            job = (body.get("data") or {}).get("pipelineOrError") or {}
            if job.get("__typename") == "Pipeline" or time.monotonic() > deadline:
                break
            time.sleep(1)
        runs = job.get("runs") or []
        assert [r["status"] for r in runs] == ["SUCCESS"], body  # the iterate's one training run
        run_id = runs[0]["runId"]
        # The first visit's "join the community" dialog covers the page: dismissed as its Skip does.
        assert graphql("mutation { setNuxSeen }")["data"]["setNuxSeen"] is True

        runs_url, png = f"{base}/locations/flywheel.definitions/jobs/train_and_deploy/runs", tmp_path / "job-runs.png"
        dom, text = browser.page(runs_url, run_id, screenshot=png)
        # its row: the short id as text, the whole one in its link to /runs/<id>
        assert run_id in dom and run_id[:8] in text, text
        assert "train_and_deploy" in text and "Success" in text, text

        _, text = browser.page(f"{base}/assets/evaluation?view=checks", reason)
        assert "gate" in text and reason in text, text  # the gate check's latest result: the reason
        _, text = browser.page(f"{base}/assets/evaluation", reason)
        assert reason in text, text  # and on the asset's own page, in its latest materialization

        _, text = browser.page(f"{base}/runs/{run_id}", "epoch 1/")
        assert "epoch 1/" in text and "challenger" in text, text  # the training step's say() lines

        shot = png.read_bytes()  # the job's runs page, taken with its DOM above
        assert png_size(shot) == WINDOW and len(shot) > 20_000, len(shot)  # a rendered page, not blank
    finally:
        proc.terminate()
        proc.wait(timeout=30)
