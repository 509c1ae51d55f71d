"""Worker start inside a Dagster step: seconds from asking for a worker process to the first clip it
has checked, for `flywheel.workers` started by fork (what ingest uses on Linux) and by exec (a cold
`python -m flywheel.workers`, what it uses elsewhere), and for a forkserver `ProcessPoolExecutor`
preloading `flywheel.ingest` (what ingest used before), each cold, as every step process pays it.

The step runs twice: under `dagster job execute` (a console script is the main module, and
multiprocessing's children run the main module again before their first task) and under
`python -m dagster job execute` (a main run as a module, as Dagster's run launcher starts runs:
children skip it). This module is also the Dagster code location the two commands load.
"""

from __future__ import annotations

import functools
import io
import json
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dagster as dg

OUT = "FLYWHEEL_WORKER_START_OUT"  # where the step writes its figures (JSON)


def bench_worker_start(repeats: int = 3) -> dict:
    """Both ways of starting a worker, in a step under each kind of main module."""
    dagster = shutil.which("dagster", path=os.path.dirname(sys.executable)) or "dagster"
    launches = {"dagster job execute (console script)": [dagster],
                "python -m dagster job execute (as the run launcher)": [sys.executable, "-m", "dagster"]}  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        for name, command in launches.items():
            out = Path(tmp) / "out.json"
            env = {**os.environ, "DAGSTER_HOME": tmp, OUT: str(out), "FLYWHEEL_WORKER_START_REPEATS": str(repeats)}
            subprocess.run([*command, "job", "execute", "-f", __file__, "-j", "worker_start"], env=env,
                           check=True, capture_output=True, cwd=tmp)  # fmt: skip
            results[name] = json.loads(out.read_text())
    return {"repeats": repeats, "seconds_to_first_clip (best)": results}


def _one_clip(root: Path) -> tuple:
    """A store holding one claimed clip, and the check ingest maps over clips."""
    from PIL import Image

    from flywheel import layout
    from flywheel.clips import write_clip
    from flywheel.ingest import reading
    from flywheel.store import open_store

    buf = io.BytesIO()
    Image.new("RGB", (96, 72), (90, 120, 150)).save(buf, "JPEG")
    frames = [("front", 10**9 * (i + 1), "jpeg", buf.getvalue()) for i in range(8)]
    store = open_store(str(root))
    key = "landing/veh-1/2026-01-01/c1.mcap"
    store.write_bytes(key, write_clip({"clip_id": "c1"}, frames))
    store.write_bytes(layout.claim_key(key), json.dumps({"batch_id": "b"}).encode())
    options = {"classes": ["car"], "max_pixels": 4096 * 4096, "max_chunk_bytes": 2**28, "resize": None}
    return functools.partial(reading.check_clip, store, options, ["b"], "b"), {"key": key}


def _forkserver_pool(check, clip) -> float:
    start = time.perf_counter()
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["flywheel.ingest"])
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        verdict = pool.submit(check, clip).result()[0]
        seconds = time.perf_counter() - start
    _ok(verdict)
    multiprocessing.forkserver._forkserver._stop()  # cold again, as the next step process starts
    return seconds


def _flywheel_worker(check, clip, start: str) -> float:
    from flywheel.workers import Worker

    began = time.perf_counter()
    worker = Worker(start)
    try:
        verdict = worker.run(check, [clip])[0][0]
        seconds = time.perf_counter() - began
    finally:
        worker.close()
    _ok(verdict)
    return seconds


def _ok(verdict: str) -> None:
    if verdict != "ok":
        raise RuntimeError(f"the worker's verdict on the bench's clip is {verdict!r}, not 'ok'")


@dg.asset
def worker_start(context) -> None:
    """Time a cold worker's first clip, each way, in this step process."""
    with tempfile.TemporaryDirectory() as tmp:
        check, clip = _one_clip(Path(tmp))
        best: dict[str, float] = {}
        for _ in range(int(os.environ.get("FLYWHEEL_WORKER_START_REPEATS", "3"))):
            ways = (("flywheel.workers, fork", functools.partial(_flywheel_worker, start="fork")),
                    ("flywheel.workers, exec", functools.partial(_flywheel_worker, start="exec")),
                    ("forkserver pool", _forkserver_pool))  # fmt: skip
            for name, way in ways:
                best[name] = round(min(best.get(name, float("inf")), way(check, clip)), 3)
    context.log.info(f"seconds to a cold worker's first clip: {best}")
    Path(os.environ[OUT]).write_text(json.dumps(best))


defs = dg.Definitions(assets=[worker_start], jobs=[dg.define_asset_job("worker_start", selection=[worker_start])])
