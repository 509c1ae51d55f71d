"""Cycle benchmark: latency of whole flywheel iterations, landing to deployed, per Dagster step.

In a fresh temporary FLYWHEEL_HOME (its own store and Dagster instance), each iteration simulates
the fleet's clips, then runs `run_iteration` (what `flywheel iterate` runs: the ingest run, then
`train_and_deploy`, both in process). Measured per iteration: the wall seconds of `run_iteration`,
the seconds of each step of both runs (STEP_START to STEP_SUCCESS/FAILURE in the instance's event
log, see benchmarks.steps) and the share of the wall time outside the `challenger` (training) step.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import TYPE_CHECKING

from benchmarks.steps import step_timings

if TYPE_CHECKING:
    from flywheel.cli.base import Ctx


def bench_cycle(obj: Ctx, *, clips: int, iterations: int) -> list[dict]:
    """`iterations` iterations of `clips` clips each with the config of `obj`; one row each."""
    from flywheel.cli.base import Ctx
    from flywheel.cli.driver import run_iteration
    from flywheel.sim import simulate

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FLYWHEEL_HOME"] = tmp
        os.environ.pop("DAGSTER_HOME", None)
        fresh = Ctx(obj.config, {**obj.overrides, "store.root": tmp})
        for i in range(iterations):
            simulate(fresh.store(), fresh.settings, clips=clips, seed=i)
            t0 = time.perf_counter()
            summary = run_iteration(fresh)
            total = time.perf_counter() - t0
            steps = _iteration_step_seconds(fresh.instance(), summary["run_id"])
            outside_training = 1 - steps.get("challenger", 0.0) / total
            rows.append({"iteration": i + 1, "total_s": round(total, 2), "steps_s": steps,
                         "outside_training_share": round(outside_training, 3),
                         "gate_passed": summary["gate_passed"],
                         "dataset_rows": summary["frames"]})  # fmt: skip
    return rows


def _iteration_step_seconds(instance, training_run_id: str) -> dict[str, float]:
    """Seconds per step of the latest ingest run and of the training run `training_run_id`."""
    import dagster as dg

    (ingest_run,) = instance.get_runs(dg.RunsFilter(job_name="ingest_batch"), limit=1)
    return {
        step: round(timing.seconds, 2)
        for run_id in (ingest_run.run_id, training_run_id)
        for step, timing in step_timings(instance, run_id).items()
    }
