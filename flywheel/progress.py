"""Progress bars in the terminal: shown while the command line runs the work, quiet everywhere else.

The command line executes its Dagster runs in its own process (`execute_in_process`): it cannot
pass `progress=True` through the assets (and the loop functions they call) to the loops that
take long, so it wraps those runs in `shown()`. A loop asks for a `bar(..., progress=progress)`:
an explicit True or False wins; None, the default, follows `shown()`, which is off unless the
command line turned it on. Under the daemon and in library calls nothing turns it on, so the
assets stay quiet. Bars go to stderr and clear themselves when done (leave=False).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tqdm import tqdm

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
    """A tqdm bar on stderr that clears itself when closed; a no-op unless `enabled(progress)`."""
    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr,
                disable=not enabled(progress))  # fmt: skip
