import functools
import os
import time

import pytest

from flywheel import clips, workers
from tests.conftest import CLASSES, make_clip


def _wait_for(marker: str) -> None:
    """Wait (here, in the test's process) for a worker to leave `marker`: the test does not depend on
    timing."""
    deadline = time.monotonic() + 120
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.01)


def _wait_for_a_worker(parent: int, marker: str, item: int) -> tuple[int, int]:
    """In a worker process: mark that a worker worked. Here: wait for that mark, so that this process
    cannot finish every chunk before the worker has started (the test does not depend on timing)."""
    if os.getpid() != parent:
        open(marker, "a").close()
    else:
        _wait_for(marker)
    return item, os.getpid()


STARTS = pytest.mark.parametrize("start", ["fork", "exec"])


@STARTS
def test_a_worker_shares_the_items_with_this_process_and_their_order_is_kept(tmp_path, start):
    """workers=2: the worker takes chunks from the front once it has started, this process from the
    back; the results come back in the items' order, each item done once."""
    fn = functools.partial(_wait_for_a_worker, os.getpid(), str(tmp_path / "worker-worked"))
    ticks = []
    out = workers.shared_map(fn, list(range(40)), 2, tick=ticks.append, start=start)
    assert [item for item, _ in out] == list(range(40)) and sum(ticks) == 40
    pids = [pid for _, pid in out]
    assert os.getpid() in pids and len(set(pids)) == 2  # both processes worked
    ours = [pid == os.getpid() for pid in pids]
    assert ours == sorted(ours)  # the worker's share is a prefix, this process's the rest


def _misbehave_in_a_worker(how: str, parent: int, marker: str, item: int) -> int:
    """In a worker process: leave a mark, then `how`: die (killed, out of memory), fail (raise) or
    stall (hang on a lock it will never get, say). Here: wait for the mark, and do the item."""
    if os.getpid() != parent:
        open(marker, "a").close()
        if how == "die":
            os._exit(1)
        if how == "fail":
            raise ValueError(f"item {item} is bad")
        time.sleep(120)
    _wait_for(marker)
    return item


@STARTS
def test_a_worker_that_dies_leaves_its_chunk_to_this_process(tmp_path, start):
    fn = functools.partial(_misbehave_in_a_worker, "die", os.getpid(), str(tmp_path / "worker-died"))
    ticks = []
    assert workers.shared_map(fn, list(range(40)), 2, tick=ticks.append, start=start) == list(range(40))
    assert (tmp_path / "worker-died").exists() and sum(ticks) == 40  # it did get a chunk, and died on it


@STARTS
def test_quick_items_come_back_whole_and_in_order_whoever_does_them(start):
    """Items quick enough that this process may do them all while the workers are still starting."""
    assert workers.shared_map(abs, list(range(-40, 0)), 3, start=start) == list(range(40, 0, -1))


@STARTS
def test_an_error_in_a_worker_is_raised_here(tmp_path, start):
    fn = functools.partial(_misbehave_in_a_worker, "fail", os.getpid(), str(tmp_path / "worker-failed"))
    with pytest.raises(ValueError, match=r"item 0 is bad") as e:
        workers.shared_map(fn, list(range(40)), 2, start=start)
    note = "".join(e.value.__notes__)  # where it happened, for whoever reads the failed step's log
    assert "raised in worker process" in note and "_misbehave_in_a_worker" in note


def test_an_exec_worker_imports_what_reading_clips_needs_and_not_the_rest():
    """Where workers cannot fork: no main script again, no pyarrow, pydantic, Dagster or torch (an
    ingest worker under Dagster used to import all of Dagster before its first clip)."""
    worker = workers.Worker("exec")
    try:
        read = functools.partial(clips.read_clip, classes=CLASSES)
        [parsed] = worker.run(read, [make_clip("c1")])
        assert parsed.meta.clip_id == "c1" and parsed.frames
        [(main, loaded)] = worker.run(eval, ["(sys.modules['__main__'].__spec__.name, sorted(sys.modules))"])
    finally:
        worker.close()
    assert main == "flywheel.workers" and "flywheel.clips" in loaded and "mcap" in loaded
    heavy = {"pyarrow", "pydantic", "dagster", "torch", "cv2", "tqdm", "boto3", "tests"}
    assert heavy.isdisjoint(loaded), heavy & set(loaded)
    assert worker.process.returncode == 0  # it exits when its pipes close


@STARTS
def test_a_worker_that_stalls_on_its_chunk_is_stopped_and_its_chunk_done_here(tmp_path, start, caplog):
    """Nothing waits for good on a worker: once this process has done every other chunk, a worker
    still on one after `stall_s` is stopped, and its chunk is done here."""
    fn = functools.partial(_misbehave_in_a_worker, "stall", os.getpid(), str(tmp_path / "worker-stalled"))
    began = time.monotonic()
    assert workers.shared_map(fn, list(range(40)), 2, stall_s=1, start=start) == list(range(40))
    assert time.monotonic() - began < 60  # not the 120 s the worker would have taken
    assert "its chunk is done here" in caplog.text


def _pid(_) -> int:
    return os.getpid()


def test_a_forked_worker_exits_when_its_pipes_close_without_running_this_process_exit_handlers(tmp_path):
    """A forked worker is a copy of this process: it serves its pipe, then leaves with its own exit
    code, and this process's exit handlers (here: one that leaves a file) do not run there."""
    import atexit

    mark = tmp_path / "exit-handler-ran"
    handler = functools.partial(mark.touch)
    atexit.register(handler)
    try:
        worker = workers.Worker("fork")
        try:
            [pid] = worker.run(_pid, [None])
        finally:
            worker.close()
    finally:
        atexit.unregister(handler)
    assert pid == worker.process.pid != os.getpid() and worker.process.returncode == 0
    assert not mark.exists()
