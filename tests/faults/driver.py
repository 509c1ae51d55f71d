"""Runs one `flywheel` command in this process and kills it with SIGKILL (or FLYWHEEL_FAULT_SIGNAL) at a named point.

    python -m tests.faults.driver <point> <command> [args ...]

A point is a store write (or an MLflow alias move) that the command reaches: right after the
n-th write whose key matches the point's pattern, the process dies as it would under `kill -9`
(no cleanup, no finally blocks, no atexit). The test that calls this then reruns the command
normally and checks that nothing is stuck, lost or half-visible.
"""

from __future__ import annotations

import os
import re
import signal
import sys

# point -> (what it hooks, key pattern, which matching call: 1 = the first)
POINTS: dict[str, tuple[str, str, int]] = {
    "batch_committed": ("write", r"^batches/[^/]+\.json$", 1),
    "clip_claimed": ("create", r"^claims/", 2),
    "quarantine_reason_written": ("write", r"^quarantine/.*\.reason\.json$", 1),
    "accepted_written": ("write", r"^batches/.*\.accepted\.json$", 1),
    "frames_staged": ("parquet", r"^staging/frames/", 1),
    "frames_written": ("parquet", r"^frames/", 1),
    "queue_written": ("write", r"^labeling/queue/", 1),
    "labels_written": ("parquet", r"^labels/", 1),
    "augmented_written": ("parquet", r"^augmented/", 1),
    "dataset_shard_written": ("shard", r"", 1),
    "dataset_manifest_written": ("write", r"^datasets/[^/]+/v\d+/manifest\.json$", 1),
    "golden_written": ("write", r"^datasets/[^/]+/golden/", 1),
    "evaluation_written": ("write", r"^evaluations/", 1),
    "onnx_written": ("write", r"^deploy/.*/model\.onnx$", 1),
    "deploy_manifest_written": ("write", r"^deploy/[^/]+/[^/]+/manifest\.json$", 1),
    "current_moved": ("write", r"^deploy/[^/]+/current\.json$", 1),
    "champion_alias_moved": ("alias", r"^champion$", 1),
}


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    # FLYWHEEL_FAULT_SIGNAL=TERM: a polite stop (kill without -9) instead, which the command may handle
    os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("FLYWHEEL_FAULT_SIGNAL", "KILL")))


def install(point: str) -> None:
    """Patch the store and the tracker so the process dies right after `point`."""
    from flywheel import store as store_mod
    from flywheel.tracking import Tracker

    kind, pattern, nth = POINTS[point]
    seen = {"n": 0}

    def hit(key: str) -> None:
        if re.search(pattern, key):
            seen["n"] += 1
            if seen["n"] == nth:
                _die()

    def wrap(cls, name: str, hook: str) -> None:
        real = getattr(cls, name)

        def patched(self, key, *a, **kw):
            out = real(self, key, *a, **kw)
            if kind == hook:
                hit(key)
            return out

        setattr(cls, name, patched)

    for cls in (store_mod.LocalStore, store_mod.S3Store):
        wrap(cls, "write_bytes", "write")
        wrap(cls, "create", "create")
        real_move = cls.move

        def move(self, src, dst, _real=real_move):  # an object that appears by a move (staged frames)
            _real(self, src, dst)
            if kind == "parquet":
                hit(dst)

        cls.move = move
    wrap(store_mod.Store, "write_parquet", "parquet")
    from flywheel.data import dataset

    real_shard = dataset._write_shard  # dataset shards are written by pyarrow's writer, not write_parquet

    def write_shard(fs, path, *a, **kw):
        out = real_shard(fs, path, *a, **kw)
        if kind == "shard":
            hit(path)
        return out

    dataset._write_shard = write_shard
    real_alias = Tracker.set_alias

    def set_alias(self, alias, version):
        real_alias(self, alias, version)
        if kind == "alias":
            hit(alias)

    Tracker.set_alias = set_alias


def main() -> None:
    point, *command = sys.argv[1:]
    if point not in POINTS:
        raise SystemExit(f"unknown fault point {point!r}; known: {sorted(POINTS)}")
    install(point)
    from flywheel.cli import main as cli

    cli(command, standalone_mode=True)


if __name__ == "__main__":
    main()
