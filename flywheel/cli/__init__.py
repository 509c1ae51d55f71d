"""The `flywheel` command line. It drives Dagster: every run it starts is a run of the instance the UI
reads and can re-execute (flywheel/cli/driver.py).

    base.py      the invocation's settings and store (`Ctx`), the Dagster home, the group `main`
    driver.py    how a job runs and what a failure says; one iteration; the fresh-data sensor once
    commands.py  the day-to-day commands;  ui.py  `flywheel ui`;  demo.py  `flywheel demo`

The benchmarks' commands (`flywheel bench`) live in benchmarks/cli.py and import from here, not the
other way round: this package adds their group last.
"""

from __future__ import annotations

from flywheel.cli import commands, demo, ui  # noqa: F401  (each registers its commands on main)
from flywheel.cli.base import Ctx, command, main
from flywheel.cli.driver import run_iteration

__all__ = ["Ctx", "command", "main", "run_iteration"]


def _add_bench() -> None:
    from benchmarks.cli import bench

    main.add_command(bench)


_add_bench()
