"""Recovery as plain functions: ingest retries from a run history, parked batches, orphaned runs'
processes, the first creation of a database."""

import multiprocessing
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from flywheel import layout, recovery
from flywheel.recovery import IngestRun, next_ingest

NOW = 1_000_000.0
LIMITS = {"now": NOW, "max_attempts": 3, "backoff_s": 60.0}


def failed(minutes_ago: float, run_id: str = "r") -> IngestRun:
    return IngestRun(run_id, "FAILURE", updated_at=NOW - 60 * minutes_ago)


@pytest.mark.parametrize(
    "runs, action, run_key",
    [
        ([], "run", "b"),  # partition added, run never started: the first attempt, again
        ([IngestRun("r", "STARTED", NOW)], "wait", None),
        ([IngestRun("r", "QUEUED", NOW)], "wait", None),
        ([failed(5), IngestRun("s", "SUCCESS", NOW)], "done", None),
        ([failed(0.5)], "wait", None),  # the first retry waits a minute ...
        ([failed(1)], "run", "b:retry-1"),  # ... then runs with a fresh key
        ([IngestRun("r", "CANCELED", NOW - 120)], "run", "b:retry-1"),
        ([failed(30), failed(1.5)], "wait", None),  # the second: two minutes after the last
        ([failed(30), failed(2)], "run", "b:retry-2"),
        ([failed(30), failed(20), failed(0)], "park", None),  # the third failure parks it at once
        ([IngestRun("r", "FAILURE", NOW, will_retry=True)], "wait", None),  # Dagster retries it
        # ... and did: its retry's failure counts, and nothing waits for the first any more
        ([IngestRun("r", "FAILURE", NOW - 600, will_retry=True), failed(2)], "run", "b:retry-2"),
    ],
)
def test_next_ingest(runs, action, run_key):
    d = next_ingest("b", runs, **LIMITS)
    assert (d.action, d.run_key) == (action, run_key)


def test_a_waiting_retry_says_when_and_a_parked_one_how_often_it_failed():
    d = next_ingest("b", [failed(30), failed(1)], **LIMITS)
    assert d.failures == 2 and d.retry_at == NOW - 60 + 120
    assert next_ingest("b", [failed(3), failed(2), failed(1)], **LIMITS).failures == 3


def test_park_records_why_and_a_success_unparks(tmp_path):
    from flywheel.store import open_store

    store = open_store(str(tmp_path / "store"))
    store.write_json(layout.batch_key("b1"), {"batch_id": "b1"})
    recovery.park(store, "b1", failures=5, run_id="r9", error="frames: OSError: disk full")
    parked = recovery.parked_batches(store, ["b1", "b2"])
    assert list(parked) == ["b1"]
    assert parked["b1"]["error"] == "frames: OSError: disk full"
    assert parked["b1"]["last_run_id"] == "r9"
    recovery.unpark(store, "b1")
    assert recovery.parked_batches(store, ["b1"]) == {}


def _error(cls_name: str, message: str, cause=None):
    return SimpleNamespace(cls_name=cls_name, message=message, cause=cause)


def test_failure_line_names_what_the_step_raised():
    raised = _error(
        "NotADirectoryError", "NotADirectoryError: [Errno 20] Not a directory: 'frames'\nmore\n"
    )
    wrapped = _error("RetryRequestedFromPolicy", "Exceeded max_retries of 2\n",
                     _error("DagsterExecutionStepExecutionError", "dagster...: Error in op\n", raised))  # fmt: skip
    line = recovery.failure_line("frames", wrapped)
    assert line == "frames: NotADirectoryError: [Errno 20] Not a directory: 'frames'"
    assert recovery.failure_line(None, _error("ValueError", "")) == "ValueError"


def test_process_gone():
    mine = recovery.process_tags()
    assert not recovery.process_gone(mine)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert recovery.process_gone({**mine, recovery.PID_TAG: str(dead.pid)})
    # the same pid, started at another time: the pid was reused by another process
    assert recovery.process_gone({**mine, recovery.PID_START_TAG: "1"})
    # another host's process cannot be judged from here
    elsewhere = {
        recovery.HOST_TAG: socket.gethostname() + "-other",
        recovery.PID_TAG: str(dead.pid),
    }
    assert not recovery.process_gone(elsewhere)
    # not started by a command: the daemon's run monitoring owns it
    assert not recovery.process_gone({})


def _create(path, log, i, start):
    import time

    def note(event):  # one unbuffered append: the file's order is the order the writes happened
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{event} {i}\n".encode())
        os.close(fd)

    start.wait()  # all three ask at once, before any has created the database
    with recovery.created_once(path):
        note("in")
        time.sleep(0.5)  # any overlap of two creators would show in the log
        note("out")


def test_created_once_lets_one_process_at_a_time_create(tmp_path):
    """Three processes that find no database yet create it one at a time (one that comes once it
    exists opens it without the lock: that is the point, so they all start together here)."""
    log, start = tmp_path / "log", multiprocessing.Barrier(3)
    procs = [
        multiprocessing.Process(target=_create, args=(tmp_path / "db", log, i, start)) for i in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    events = [line.split() for line in log.read_text().splitlines()]
    assert len(events) == 6
    assert all(events[k][0] == "in" and events[k + 1] == ["out", events[k][1]] for k in (0, 2, 4))
    assert (tmp_path / "db.ready").exists()
