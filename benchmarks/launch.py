"""What the command line's way of starting a run costs: seconds per run of `flywheel.cli.driver.execute`
(a run of the instance with the UI's origins, executed in process) against Dagster's own
`execute_in_process` (a run the UI cannot re-execute), on the same small job in one instance, and the
seconds a launched run would pay first: a fresh process importing the code location, as the default
run launcher's `dagster api execute_run` does before its first step.

The job is three assets that do nothing, so what is timed is the run's bookkeeping (run record,
plan, events in the instance's storage), not work. Arms alternate run by run, so a busy machine
slows both alike; the medians are what to read.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg


@dg.asset
def first() -> int:
    return 1


@dg.asset
def second(first: int) -> int:
    return first + 1


@dg.asset
def third(second: int) -> int:
    return second + 1


JOB = dg.define_asset_job("launch_bench", selection=[first, second, third])
DEFS = dg.Definitions(assets=[first, second, third], jobs=[JOB])


def bench_launch(runs: int = 20, imports: int = 3) -> dict:
    """Median seconds per run of each way, over `runs` alternating runs, and of a cold import of the
    code location over `imports` fresh processes."""
    from flywheel.cli.driver import MODULE, execute

    job = DEFS.resolve_job_def(JOB.name)
    seconds: dict[str, list[float]] = {"driver.execute": [], "execute_in_process": []}
    with tempfile.TemporaryDirectory() as home:
        Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        with dg.DagsterInstance.from_config(home) as instance:
            ways = {"driver.execute": lambda: execute(job, instance=instance),
                    "execute_in_process": lambda: job.execute_in_process(instance=instance, raise_on_error=False)}  # fmt: skip
            for way in ways.values():  # warm both (imports, storage schema) before timing
                assert way().success
            for _ in range(runs):
                for name, way in ways.items():
                    start = time.perf_counter()
                    ok = way().success
                    seconds[name].append(time.perf_counter() - start)
                    if not ok:
                        raise RuntimeError(f"a {name} run of the bench job failed")
            recorded = len(instance.get_run_records())
    cold = []
    env = {**os.environ, "DAGSTER_HOME": tempfile.gettempdir()}
    for _ in range(imports):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {MODULE}"], check=True, env=env, capture_output=True)
        cold.append(time.perf_counter() - start)
    median = {k: round(statistics.median(v), 4) for k, v in seconds.items()}
    return {
        "runs_per_way": runs,
        "runs_recorded": recorded,
        "median_seconds_per_run": median,
        "driver_overhead_seconds_per_run": round(median["driver.execute"] - median["execute_in_process"], 4),
        "seconds_per_run": {k: [round(s, 4) for s in v] for k, v in seconds.items()},
        "cold_import_of_the_code_location_seconds": [round(s, 2) for s in cold],
        "load_average": [round(x, 1) for x in os.getloadavg()],  # other work on the machine meanwhile
    }
