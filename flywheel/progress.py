"""Progress bars in the terminal: shown while the command line runs the work, quiet everywhere else.

The command line executes its Dagster runs in its own process (`execute_in_process`): it cannot
pass `progress=True` through the assets (and the loop functions they call) to the loops that
take long, so it wraps those runs in `shown()`. A loop asks for a `bar(..., progress=progress)`:
an explicit True or False wins; None, the default, follows `shown()`, which is off unless the
command line turned it on. Under the daemon and in library calls nothing turns it on, so the
assets stay quiet. Bars go to stderr: on a terminal they redraw in place and clear themselves when
done; when stderr is a file or a pipe (`./dev demo > log`), each bar writes a plain line at most
every LINE_EVERY_S seconds and its last state when done, so a log reads line by line.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tqdm import tqdm

LINE_EVERY_S = 15.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

_SHOWN: ContextVar[bool] = ContextVar("flywheel_progress_shown", default=False)


@contextmanager
def shown() -> Iterator[None]:
    """Within this block (this thread and the runs it executes in process), bars left to their
    default (`progress=None`) are shown."""
    token = _SHOWN.set(True)
    try:
        yield
    finally:
        _SHOWN.reset(token)


def enabled(progress: bool | None = None) -> bool:
    """Whether a bar with this `progress` shows: `progress` itself, else the `shown()` state."""
    return _SHOWN.get() if progress is None else bool(progress)


def bar(*, total: int, desc: str, unit: str, progress: bool | None = None) -> tqdm:
    """A tqdm bar on stderr (see the module's docstring for a file or pipe); a no-op unless
    `enabled(progress)`."""
    if _is_terminal(sys.stderr):
        return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, disable=not enabled(progress))
    return tqdm(total=total, desc=desc, unit=unit, leave=True, file=_Lines(sys.stderr), ascii=True, ncols=100,
                mininterval=LINE_EVERY_S, disable=not enabled(progress))  # fmt: skip


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Lines:
    """A file for tqdm that turns its in-place redraws into whole lines: carriage returns and
    cursor moves dropped, a newline after each state, blank clears skipped."""

    def __init__(self, out):
        self.out = out

    def write(self, text: str) -> None:
        for part in _ANSI.sub("", text).split("\r"):
            line = part.strip("\n")
            if line.strip():
                self.out.write(line.rstrip() + "\n")

    def flush(self) -> None:
        self.out.flush()
