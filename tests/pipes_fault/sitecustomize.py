"""Fault injection for training launched in a child process (tests/test_pipes_training.py).

On PYTHONPATH, Python imports this at start-up. With FLYWHEEL_TEST_CRASH="<rank>:<epoch>:<marker>"
set, the rank `<rank>` raises when its reader starts epoch `<epoch>` (0-based), once: the marker
file records that it happened, so a retry of the step trains through.
"""

import os

if os.environ.get("FLYWHEEL_TEST_CRASH"):
    rank, epoch, marker = os.environ["FLYWHEEL_TEST_CRASH"].split(":", 2)
    if os.environ.get("RANK") == rank:
        from flywheel.data import reader

        real = reader.ShardReader.set_epoch

        def set_epoch(self, e):
            if e == int(epoch) and not os.path.exists(marker):
                open(marker, "w").close()
                raise RuntimeError(f"injected failure on rank {rank} at epoch {e}")
            return real(self, e)

        reader.ShardReader.set_epoch = set_epoch
