"""Nothing stuck, nothing lost: what the flywheel does after a failure, a kill or a race.

- Ingest retries. A fleet batch whose ingest run failed, was cancelled or was never started is
  run again with exponential backoff (`sensor.ingest_retry_s`, doubled after each failure) and a
  fresh run key per attempt (`<batch>:retry-<n>`); after `sensor.max_ingest_attempts` failed runs
  it is parked: `batches/<id>.parked.json` keeps its last error and `flywheel status` shows it.
  `next_ingest` decides from the batch's run history as plain data, so the fresh-data sensor
  stays a thin adapter over Dagster's run records.
- Orphaned runs. A run the command line starts is tagged with its host and process; a later
  command that finds such a run still STARTED while its process is gone marks it failed
  (`process_gone`), so it blocks nothing.
- The first run. Two commands on a fresh home would race to create the same SQLite schemas;
  `created_once` makes the first creation one process's job.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from flywheel import layout

if TYPE_CHECKING:  # the command line and the tracker import this module before any store exists
    from flywheel.store import Store

# Dagster run statuses: the attempt succeeded; it ended without success.
SUCCESS, FAILED = "SUCCESS", frozenset({"FAILURE", "CANCELED"})

# Tags of the runs the command line starts in its own process.
HOST_TAG, PID_TAG, PID_START_TAG = "flywheel/host", "flywheel/pid", "flywheel/pid_start"


# ---------------------------------------------------------------- ingest retries


@dataclass(frozen=True)
class IngestRun:
    """One ingest run of a batch, as plain data."""

    run_id: str
    status: str  # Dagster's run status name: SUCCESS, FAILURE, CANCELED, QUEUED, STARTED, ...
    updated_at: float  # unix seconds of its last change: when it ended, for a finished run
    will_retry: bool = False  # Dagster's own run retries will start another run for it


@dataclass(frozen=True)
class IngestDecision:
    """What the sensor does with a batch this tick."""

    action: Literal["done", "wait", "run", "park"]
    failures: int = 0  # failed attempts so far
    run_key: str | None = None  # with "run"
    retry_at: float | None = None  # with "wait" after a failure: when the next attempt may start


def next_ingest(
    batch_id: str, runs: Sequence[IngestRun], *, now: float, max_attempts: int, backoff_s: float
) -> IngestDecision:
    """Whether the ingest of `batch_id` needs another run, given all its ingest runs so far.

    Done after any success; with no run at all, run it now (a tick or a command killed after the
    partition was added); wait while a run is in progress (any status other than success, failure
    or cancelled) or Dagster will retry the last one; after `n` failures, retry
    `backoff_s * 2**(n-1)` seconds after the last one ended, until `max_attempts` runs have failed:
    then park it.
    """
    if any(r.status == SUCCESS for r in runs):
        return IngestDecision("done")
    if not runs:
        return IngestDecision("run", run_key=batch_id)
    last = max(runs, key=lambda r: r.updated_at)
    if any(r.status not in FAILED for r in runs) or last.will_retry:
        return IngestDecision("wait")
    failures = len(runs)
    if failures >= max_attempts:
        return IngestDecision("park", failures=failures)
    retry_at = last.updated_at + backoff_s * 2 ** (failures - 1)
    if now < retry_at:
        return IngestDecision("wait", failures=failures, retry_at=retry_at)
    return IngestDecision("run", failures=failures, run_key=f"{batch_id}:retry-{failures}")


def park(store: Store, batch_id: str, *, failures: int, run_id: str, error: str) -> dict:
    """Give up retrying a batch: record why, for `flywheel status` and the operator."""
    record = {
        "batch_id": batch_id, "failures": failures, "last_run_id": run_id, "error": error,
        "parked_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    store.write_json(layout.parked_key(batch_id), record)
    return record


def unpark(store: Store, batch_id: str) -> None:
    """Forget a parked batch's record (an operator's run of it succeeded)."""
    store.delete(layout.parked_key(batch_id))


def parked_batches(store: Store, batch_ids: Sequence[str]) -> dict[str, dict]:
    """The parked records of these batches, by batch id (one listing of `batches/`)."""
    listed = {o.key for o in store.list(layout.BATCHES)}
    keys = {b: layout.parked_key(b) for b in batch_ids}
    return {b: store.read_json(k) for b, k in keys.items() if k in listed}


# Errors Dagster wraps around what a step raised (the step's error is their cause).
_WRAPPERS = (
    "DagsterExecutionStepExecutionError",
    "DagsterUserCodeExecutionError",
    "RetryRequestedFromPolicy",
)


INTERRUPTED = "interrupted by Ctrl-C or a stop signal"


def failure_line(step_key: str | None, error) -> str:
    """`<step>: <error's first line>` from a step failure's error (Dagster's SerializableErrorInfo:
    `cls_name`, `message`, `cause`), naming what the step raised rather than Dagster's wrapper."""
    while error.cause is not None and error.cls_name in _WRAPPERS:
        error = error.cause
    if error.cls_name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"):
        return f"{step_key}: {INTERRUPTED}" if step_key else INTERRUPTED
    first = error.message.strip().splitlines()[0] if error.message.strip() else error.cls_name
    return f"{step_key}: {first}" if step_key else first


# ---------------------------------------------------------------- orphaned runs


def identity() -> dict:
    """Who writes a record, as the system knows it: the login of this process's effective user id and
    the host. Through the command line that is the person's account; through a run launched from the
    UI it is the service's, and the stated name (`by`) is only vouched for by whoever guards the UI."""
    try:
        import pwd

        account = pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):  # no passwd entry for this uid (a container): the uid itself
        account = f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return {"account": account, "host": socket.gethostname()}


def process_tags() -> dict[str, str]:
    """Tags that name this process, for the runs it executes in process, and its account (`user`: the
    UI's "Launched by")."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: _start_time(pid),
            "user": identity()["account"]}  # fmt: skip


def process_gone(tags: Mapping[str, str]) -> bool:
    """Whether the process named by a run's `process_tags` is gone. Known only on its own host (False
    elsewhere); a live process with the same pid but another start time is a reused pid (gone)."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False
    pid = int(tags[PID_TAG])
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        pass
    started = tags.get(PID_START_TAG, "")
    return bool(started) and started != _start_time(pid)


def _start_time(pid: int) -> str:
    """The process's start in clock ticks after boot (/proc/<pid>/stat field 22), '' without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()  # from field 3 on: the command name may hold spaces
    return fields[19]


# ---------------------------------------------------------------- first creation


@contextmanager
def created_once(path: Path) -> Iterator[None]:
    """Run the block that creates or opens the database at `path` under an inter-process lock until
    it has succeeded once; after that, without the lock. Two processes creating one SQLite schema
    at once collide (duplicate tables, two alembic heads); the later ones open what the first made.
    """
    ready = path.with_name(path.name + ".ready")
    if ready.exists():
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield
        ready.touch()
