"""Benchmarks behind `flywheel bench` (figures and commands in BENCHMARKS.md). Never run in tests' timing."""

from __future__ import annotations

import io
import platform
import tempfile
import time
from pathlib import Path

from mcap.records import Message
from mcap.stream_reader import StreamReader

from flywheel import ingest
from flywheel.config import Settings
from flywheel.store import open_store


def machine() -> dict:
    import os

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()}


def bench_ingest(settings: Settings, *, clips: int = 200, workdir: str | None = None, seed: int = 123) -> dict:
    """Landing MCAP -> frames Parquet (validate + write), beside the raw MCAP read rate of the same files."""
    import pandas  # noqa: F401  (pyarrow imports it on first write; keep that one-off out of the timing)

    from flywheel.sim import simulate

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store = open_store(str(Path(tmp) / "store"))
        simulate(store, settings, clips=clips, seed=seed, progress=True)
        keys = [o.key for o in ingest.pending_clips(store)]
        mb = sum(o.size for o in store.list("landing/")) / 1e6

        # Ceiling: read each file and iterate its records (chunks decompressed, messages not decoded).
        t0 = time.perf_counter()
        messages = 0
        for k in keys:
            for record in StreamReader(io.BytesIO(store.read_bytes(k))).records:
                messages += isinstance(record, Message)
        ceiling_s = time.perf_counter() - t0

        plan = ingest.plan_batch(store, min_clips=1, max_clips=len(keys))
        ingest.commit_batch(store, plan)
        t1 = time.perf_counter()
        report = ingest.validate_batch(store, plan.batch_id, settings)
        t2 = time.perf_counter()
        summary = ingest.write_frames(store, plan.batch_id, settings)
        t3 = time.perf_counter()

    frames = summary["frames"]
    ingest_s = t3 - t1
    return {
        "machine": machine(),
        "clips": len(keys),
        "frames": frames,
        "mcap_mb": round(mb, 2),
        "raw_read": {"seconds": round(ceiling_s, 3), "frames_per_s": round(frames / ceiling_s), "mb_per_s": round(mb / ceiling_s, 1)},
        "ingest": {
            "seconds": round(ingest_s, 3),
            "validate_s": round(t2 - t1, 3),
            "frames_s": round(t3 - t2, 3),
            "frames_per_s": round(frames / ingest_s),
            "mb_per_s": round(mb / ingest_s, 1),
        },
        "ingest_share_of_ceiling": round(ceiling_s / ingest_s, 3),
        "quarantined": len(report["quarantined"]),
        "parquet_mb": round(summary["bytes"] / 1e6, 2),
    }
