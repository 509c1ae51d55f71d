"""Ingest benchmark: landing MCAP -> frames Parquet, beside the raw MCAP read of the same files.

The clips are simulated into a temporary store. Timed on the wall clock, one process:
  raw read (the ceiling): read each file's bytes and iterate its records (zstd chunks
    decompressed, messages not decoded);
  ingest: `validate_batch` (parse, decode every image once, quarantine) plus `write_frames`
    (parse again, write Parquet) on one committed batch of all the clips.
"""

from __future__ import annotations

import io
import os
import platform
import tempfile
import time
from pathlib import Path

from mcap.stream_reader import StreamReader

from flywheel import ingest, layout
from flywheel.config import Settings
from flywheel.store import open_store


def machine() -> dict:
    """CPU, core count and Python version of the machine the figures come from."""
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version()}  # fmt: skip


def bench_ingest(
    settings: Settings, *, clips: int = 200, workdir: str | None = None, seed: int = 123
) -> dict:
    """Frames/s and MB/s of ingest (validate + frames) and of the raw MCAP read of `clips` clips."""
    import pandas  # noqa: F401  (pyarrow imports it on first write; keep that out of the timing)

    from flywheel.sim import simulate

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store = open_store(str(Path(tmp) / "store"))
        simulate(store, settings, clips=clips, seed=seed, progress=True)
        keys = [o.key for o in ingest.pending_clips(store)]
        mb = sum(o.size for o in store.list(layout.LANDING)) / 1e6
        ceiling_s = _raw_read_seconds(store, keys)

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
        "raw_read": {
            "seconds": round(ceiling_s, 3),
            "frames_per_s": round(frames / ceiling_s),
            "mb_per_s": round(mb / ceiling_s, 1),
        },  # fmt: skip
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


def _raw_read_seconds(store, keys: list[str]) -> float:
    """Wall seconds to read the clips `keys` and iterate their records, messages not decoded."""
    t0 = time.perf_counter()
    for key in keys:
        for _record in StreamReader(io.BytesIO(store.read_bytes(key))).records:
            pass  # iterating is the work: it decompresses the chunks and parses each record
    return time.perf_counter() - t0
