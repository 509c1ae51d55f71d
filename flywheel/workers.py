"""CPU-bound maps shared with worker processes: `shared_map` (ingest parses clips with it).

Why not `concurrent.futures.ProcessPoolExecutor`: under forkserver or spawn (fork is unsafe in a
process with native threads) its workers first run the parent's main module again, as
multiprocessing does for every child whose main is a script. Under a console script (`dagster job
execute`, `dagster asset materialize`, `flywheel ingest`) that is the whole command: in a step of
`dagster job execute`, 0.97 s to a cold worker's first clip against 0.12 s here (`flywheel bench
worker-start`). A worker here is `python -m flywheel.workers`: it imports this module, then what
the function it is sent needs (unpickling imports the function's module), nothing else.

Each worker is fed by a thread of this process over a pipe (`multiprocessing.connection` frames
the pickles): the function and a chunk of items go out, the chunk's results come back. Workers
take chunks from the front, this process takes them from the back, so this process never waits
for a worker to start; a worker that dies leaves the chunk it held to this process.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection


class WorkerGone(RuntimeError):
    """The worker process exited (killed, out of memory) before it sent a chunk's results back."""


class Worker:
    """One worker process: `run(fn, chunk)` returns `[fn(x) for x in chunk]` computed there."""

    def __init__(self) -> None:
        to_worker, from_here = os.pipe()
        to_here, from_worker = os.pipe()
        # what this process can import, the worker can: the same sys.path (a test module, a code location)
        path = os.pathsep.join(p or os.getcwd() for p in sys.path)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flywheel.workers", str(to_worker), str(from_worker)],
                pass_fds=(to_worker, from_worker), stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path},
            )  # fmt: skip
        finally:
            os.close(to_worker)
            os.close(from_worker)
        self._out = Connection(from_here, readable=False)
        self._in = Connection(to_here, writable=False)

    def run(self, fn: Callable, chunk: list) -> list:
        try:
            self._out.send((fn, chunk))
            ok, value = self._in.recv()
        except (EOFError, OSError) as e:
            raise WorkerGone(f"worker process {self.process.pid} exited ({self.process.poll()})") from e
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """Close its pipes (it exits when it reads their end) and reap it."""
        self._out.close()
        self._in.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def shared_map(fn: Callable, items: list, workers: int, *, tick: Callable[[int], object] = lambda n: None) -> list:
    """`[fn(x) for x in items]` on this process and `workers - 1` worker processes, in the items'
    order. `fn` and the items must pickle (a module-level function or a partial of one).
    `tick(n)`: called as n more items are done (a progress bar). An exception in `fn` is raised
    here, wherever it ran."""
    size = max(1, len(items) // (workers * 8))  # small enough that neither side waits long at the end
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    done: list[list | None] = [None] * len(chunks)
    cond = threading.Condition()
    state = {"front": 0, "back": len(chunks), "busy": 0, "error": None}  # chunks [front, back) are nobody's yet
    left: list[int] = []  # chunks whose worker died on them

    def take_front() -> int | None:
        with cond:
            if state["front"] >= state["back"] or state["error"] is not None:
                return None
            state["front"] += 1
            state["busy"] += 1
            return state["front"] - 1

    def feed() -> None:  # one worker's thread: start it (no waiting here), then give it chunks from the front
        worker = Worker()
        try:
            while (i := take_front()) is not None:
                outcome = None
                try:
                    done[i] = worker.run(fn, chunks[i])
                    with cond:  # a bar is not safe to tick from two threads at once
                        tick(len(chunks[i]))
                except WorkerGone:
                    left.append(i)
                    outcome = "gone"
                except BaseException as e:  # fn raised there: raised here, by the caller's thread
                    outcome = e
                with cond:
                    state["busy"] -= 1
                    if isinstance(outcome, BaseException) and state["error"] is None:
                        state["error"] = outcome
                    cond.notify_all()
                if outcome is not None:
                    return
        finally:
            worker.close()

    for _ in range(workers - 1):
        threading.Thread(target=feed, name="shared-map-feed", daemon=True).start()
    while True:
        with cond:
            if state["error"] is not None:
                raise state["error"]
            if state["front"] >= state["back"]:
                break
            state["back"] -= 1
            i = state["back"]
        done[i] = []
        for item in chunks[i]:
            done[i].append(fn(item))
            with cond:
                tick(1)
    with cond:  # the chunks workers hold: wait for them
        cond.wait_for(lambda: state["busy"] == 0)
        if state["error"] is not None:
            raise state["error"]
    for i in left:  # no worker thread ticks any more
        done[i] = [fn(item) for item in chunks[i]]
        tick(len(chunks[i]))
    return [r for chunk in done for r in chunk]


def _serve(from_parent: Connection, to_parent: Connection) -> None:
    """The worker's loop: (fn, chunk) in, (True, results) or (False, exception) out, until EOF."""
    while True:
        try:
            fn, chunk = from_parent.recv()
        except EOFError:
            return
        try:
            reply = (True, [fn(item) for item in chunk])
        except Exception as e:  # raised again by the caller: with where it happened here, as a note
            where = "".join(traceback.format_exception(e))
            e.add_note(f"raised in worker process {os.getpid()} (flywheel.workers):\n{where}")
            try:
                pickle.loads(pickle.dumps(e))
            except Exception:  # an exception that does not survive the trip: its text does
                e = RuntimeError(where)
            reply = (False, e)
        to_parent.send(reply)


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
