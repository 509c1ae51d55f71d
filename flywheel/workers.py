"""CPU-bound maps shared with worker processes: `map_chunks` (ingest parses clips with it) and
`shared_map` on top of it.

A worker is started one of two ways (`START`):
- `fork` (Linux): a copy of this process, ready at once with everything this process imported
  (~0.02 s to a worker's first clip; a cold interpreter takes ~0.2 s before it has imported what
  reading clips needs, a large part of a batch's work). The child runs only `_serve`: no thread of
  this process exists there and it touches no lock they hold (it reads files, parses, decodes and
  writes to its own pipe), its signal handlers are the defaults, and it leaves with `os._exit`, so
  nothing of this process (atexit handlers, buffered output) runs twice.
- `exec` (elsewhere, where fork is unsafe): `python -m flywheel.workers`, which imports this
  module, then what the function it is sent needs (unpickling imports the function's module). Not
  multiprocessing's spawn or forkserver: their children first run the parent's main module again,
  and under a console script (`dagster job execute`, `flywheel ingest`) that is the whole command
  (0.97 s to a cold worker's first clip in a Dagster step, `flywheel bench worker-start`).

Each worker is fed by a thread of this process over a pipe (`multiprocessing.connection` frames
the pickles): the function and a chunk of items go out, the chunk's results come back. Workers
take chunks from the front, this process takes them from the back, so this process never waits
for a worker to start; a worker that dies, or stalls on a chunk long after this process has done
all the others, leaves its chunk to this process.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable
from functools import partial
from multiprocessing import Pipe
from multiprocessing.connection import Connection

START = "fork" if sys.platform == "linux" else "exec"  # how `Worker` starts a worker process

log = logging.getLogger(__name__)

# this process's ends of the pipes of forked workers: a worker forked later closes them, so that a
# worker sees its pipe's end as soon as this process closes it
_OUR_ENDS: weakref.WeakSet[Connection] = weakref.WeakSet()


class WorkerGone(RuntimeError):
    """The worker process exited (killed, out of memory) before it sent a chunk's results back."""


class Worker:
    """One worker process: `run(fn, chunk)` returns `[fn(x) for x in chunk]` computed there.
    `start`: `fork` or `exec` (module docstring)."""

    def __init__(self, start: str = START) -> None:
        if start not in ("fork", "exec"):
            raise ValueError(f"a worker starts by 'fork' or 'exec', not {start!r}")
        self.process = self._fork() if start == "fork" else self._exec()

    def _fork(self) -> _Forked:
        self._in, child_out = Pipe(duplex=False)
        child_in, self._out = Pipe(duplex=False)
        pid = os.fork()
        if pid == 0:  # the worker: never back into this process's code
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                for end in (self._in, self._out, *_OUR_ENDS):
                    end.close()
                _serve(child_in, child_out)
                code = 0
            finally:
                os._exit(code)
        child_in.close()
        child_out.close()
        _OUR_ENDS.update((self._in, self._out))
        return _Forked(pid)

    def _exec(self) -> subprocess.Popen:
        to_worker, from_here = os.pipe()
        to_here, from_worker = os.pipe()
        # what this process can import, the worker can: the same sys.path (a test module, a code location)
        path = os.pathsep.join(p or os.getcwd() for p in sys.path)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "flywheel.workers", str(to_worker), str(from_worker)],
                pass_fds=(to_worker, from_worker), stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path},
            )  # fmt: skip
        finally:
            os.close(to_worker)
            os.close(from_worker)
        self._out = Connection(from_here, readable=False)
        self._in = Connection(to_here, writable=False)
        return process

    def run(self, fn: Callable, chunk: list) -> list:
        """`[fn(x) for x in chunk]`, computed there."""
        self.send(partial(_each, fn), chunk)
        return self.receive()

    def send(self, fn: Callable, chunk: list) -> None:
        """Give it `fn(chunk)` to compute; it works through what it is given in order."""
        try:
            self._out.send((fn, chunk))
        except OSError as e:
            raise self._gone() from e

    def receive(self):
        """`fn(chunk)` of the oldest chunk it was given; the error `fn` raised there, raised here."""
        try:
            ok, value = self._in.recv()
        except (EOFError, OSError) as e:
            raise self._gone() from e
        if not ok:
            raise value
        return value

    def _gone(self) -> WorkerGone:
        return WorkerGone(f"worker process {self.process.pid} exited ({self.process.poll()})")

    def kill(self) -> None:
        """Stop it now (a stalled worker); `run` waiting on it raises WorkerGone."""
        if self.process.poll() is None:
            self.process.kill()

    def close(self) -> None:
        """Close its pipes (it exits when it reads their end) and reap it."""
        self._out.close()
        self._in.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _Forked:
    """A forked worker's process, as much of `subprocess.Popen`'s interface as `Worker` uses."""

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            time.sleep(0.005)
        return self.returncode

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)


def shared_map(fn: Callable, items: list, workers: int, *, tick: Callable[[int], object] = lambda n: None,
               **options) -> list:  # fmt: skip
    """`[fn(x) for x in items]` on this process and `workers - 1` worker processes, in the items'
    order; `map_chunks` says how (`options` are its keywords)."""
    done = map_chunks(partial(_each, fn), items, workers, tick=tick, **options)
    return [r for chunk in done for r in chunk]


def _each(fn: Callable, chunk: list) -> list:
    return [fn(x) for x in chunk]


def map_chunks(
    fn: Callable, items: list, workers: int, *, tick: Callable[[int], object] = lambda n: None,
    stall_s: float | None = None, start: str | None = None, min_chunk: int = 1,
) -> list:  # fmt: skip
    """`[fn(chunk) for chunk in chunks]`, `chunks` being `items` cut in order into small chunks (of
    at least `min_chunk` items, where `fn` has a cost per chunk), on
    this process and `workers - 1` worker processes. `fn` runs where the chunk is, so that it can
    gather a chunk's results there (a table of its frames, say). It must have no side effects (a
    chunk may be done twice: by a worker that stalls, then here), and it and the items must pickle (a
    module-level function or a partial of one). `tick(n)`: called as a chunk of n items is done (a
    progress bar). An exception in `fn` is raised here, wherever it ran. `stall_s`: how long a worker
    may still hold a chunk once this process has done all the others (default: 20 times this
    process's slowest chunk, at least 30 s); then it is stopped and its chunk done here. `start`: how
    workers start (`START`)."""
    size = max(1, min_chunk, len(items) // (workers * 32))  # small: neither side waits long for the other at the end
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    done: list = [None] * len(chunks)
    cond = threading.Condition()
    state = {"front": 0, "back": len(chunks), "busy": 0, "error": None}  # chunks [front, back) are nobody's yet
    left: list[int] = []  # chunks whose worker died on them (or was stopped)

    def take_front() -> int | None:
        with cond:
            if state["front"] >= state["back"] or state["error"] is not None:
                return None
            state["front"] += 1
            state["busy"] += 1
            return state["front"] - 1

    def feed(worker: Worker) -> None:  # one worker's thread: give it chunks from the front
        held: deque[int] = deque()  # sent to it, oldest first: two, so that it never waits on this thread
        outcome: BaseException | None = None
        try:
            while True:
                while len(held) < 2 and (i := take_front()) is not None:
                    held.append(i)
                    worker.send(fn, chunks[i])
                if not held:
                    return
                done[held[0]] = worker.receive()
                i = held.popleft()
                with cond:  # a bar is not safe to tick from two threads at once
                    tick(len(chunks[i]))
                    state["busy"] -= 1
                    cond.notify_all()
        except WorkerGone:
            left.extend(held)
        except BaseException as e:  # fn raised there: raised here, by the caller's thread
            outcome = e
        finally:
            with cond:
                state["busy"] -= len(held)
                if outcome is not None and state["error"] is None:
                    state["error"] = outcome
                cond.notify_all()
            worker.close()

    pool = _start(workers - 1, start or START)  # here, before any feeding thread: a fork copies one thread
    for worker in pool:
        threading.Thread(target=feed, args=(worker,), name="shared-map-feed", daemon=True).start()
    slowest = 0.0
    while True:
        with cond:
            if state["error"] is not None:
                raise state["error"]
            if state["front"] >= state["back"]:
                break
            state["back"] -= 1
            i = state["back"]
        began = time.monotonic()
        done[i] = fn(chunks[i])
        with cond:
            tick(len(chunks[i]))
        slowest = max(slowest, time.monotonic() - began)
    with cond:  # the chunks workers hold: wait for them, but not for a worker that stalls
        patience = stall_s if stall_s is not None else max(30.0, 20 * slowest)
        if not cond.wait_for(lambda: state["busy"] == 0, timeout=patience):
            log.warning("a worker process held a chunk %.0f s after this process had done all the others: "
                        "stopped, its chunk is done here", patience)  # fmt: skip
            for worker in pool:
                worker.kill()
            cond.wait_for(lambda: state["busy"] == 0)
        if state["error"] is not None:
            raise state["error"]
    for i in left:  # no worker thread ticks any more
        done[i] = fn(chunks[i])
        tick(len(chunks[i]))
    return done


def _start(n: int, start: str) -> list[Worker]:
    """Up to `n` workers: as many as the system lets this process start (the rest is done here)."""
    pool = []
    for _ in range(n):
        try:
            pool.append(Worker(start))
        except OSError as e:  # out of processes or memory: fewer workers, not a failed map
            log.warning("could not start a worker process (%s): going on with %d", e, len(pool))
            break
    return pool


def _serve(from_parent: Connection, to_parent: Connection) -> None:
    """The worker's loop: (fn, chunk) in, (True, fn(chunk)) or (False, exception) out, until EOF."""
    while True:
        try:
            fn, chunk = from_parent.recv()
        except EOFError:
            return
        try:
            reply = (True, fn(chunk))
        except Exception as e:  # raised again by the caller: with where it happened here, as a note
            where = "".join(traceback.format_exception(e))
            e.add_note(f"raised in worker process {os.getpid()} (flywheel.workers):\n{where}")
            try:
                pickle.loads(pickle.dumps(e))
            except Exception:  # an exception that does not survive the trip: its text does
                e = RuntimeError(where)
            reply = (False, e)
        try:
            to_parent.send(reply)
        except BrokenPipeError:  # the caller stopped listening (another chunk failed): done
            return


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
