"""Step timings of Dagster runs, read through the instance's public Python API (never its tables).

A step's time is from its STEP_START event to the STEP_SUCCESS or STEP_FAILURE event that ended
it, as the instance's event log stamps them (`DagsterInstance.all_logs`), in Unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepTiming:
    """When one step of a run started and ended (Unix seconds), and whether it succeeded."""

    start: float
    end: float
    succeeded: bool

    @property
    def seconds(self) -> float:
        return self.end - self.start


def step_timings(instance, run_id: str) -> dict[str, StepTiming]:
    """Every step of run `run_id` that started and ended, by step key."""
    import dagster as dg

    start, end = dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS
    started, timings = {}, {}
    for entry in instance.all_logs(run_id, of_type={start, end, dg.DagsterEventType.STEP_FAILURE}):
        event = entry.dagster_event
        if event.event_type == start:
            started[event.step_key] = entry.timestamp
        elif event.step_key in started:
            timings[event.step_key] = StepTiming(
                start=started[event.step_key],
                end=entry.timestamp,
                succeeded=event.event_type == end,
            )
    return timings
