"""Ingest benchmark: landing MCAP -> frames Parquet, beside the ceiling measured in the same run.

The clips are simulated into a temporary store and committed as one batch. Timed on the wall clock:
  ceiling, one process: read each file's bytes and iterate its records (zstd chunks decompressed,
    messages not decoded), plus one decode-check of each image (the check validation makes: a
    DCT-scaled decode for JPEG), timed over the images taken out beforehand;
  ingest: `validate_batch` (one pass: parse, decode-check, quarantine, stage the frames) plus
    `write_frames` (commit the staged frames), with 1 worker process and with 2, each on its own
    copy of the committed batch. The 2-process time includes starting the pool.
"""

from __future__ import annotations

import io
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from mcap.stream_reader import StreamReader

from flywheel import clips as clip_contract
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
    """Frames/s and MB/s of ingest with 1 and 2 worker processes, and of the ceiling, on `clips` clips."""
    import pandas  # noqa: F401  (pyarrow imports it on first write; keep that out of the timing)

    from flywheel.sim import simulate

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        first = Path(tmp) / "w1"
        store = open_store(str(first))
        simulate(store, settings, clips=clips, seed=seed, progress=True)
        keys = [o.key for o in ingest.pending_clips(store)]
        mb = sum(o.size for o in store.list(layout.LANDING)) / 1e6
        read_s = _raw_read_seconds(store, keys)
        check_s = _decode_check_seconds(store, keys, settings)
        ceiling_s = read_s + check_s

        plan = ingest.plan_batch(store, min_clips=1, max_clips=len(keys))
        ingest.commit_batch(store, plan)
        shutil.copytree(first, Path(tmp) / "w2")  # the same committed batch for the 2-process run
        runs = {}
        for workers in (1, 2):
            st = open_store(str(Path(tmp) / f"w{workers}"))
            s = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"workers": workers})})
            t1 = time.perf_counter()
            report = ingest.validate_batch(st, plan.batch_id, s)
            t2 = time.perf_counter()
            summary = ingest.write_frames(st, plan.batch_id, s)
            t3 = time.perf_counter()
            runs[workers] = {"seconds": round(t3 - t1, 3), "validate_s": round(t2 - t1, 3),
                             "frames_s": round(t3 - t2, 3), "frames_per_s": round(summary["frames"] / (t3 - t1)),
                             "mb_per_s": round(mb / (t3 - t1), 1), "frames": summary["frames"],
                             "quarantined": len(report["quarantined"])}  # fmt: skip

    frames = runs[1]["frames"]
    return {
        "machine": machine(),
        "clips": len(keys),
        "frames": frames,
        "mcap_mb": round(mb, 2),
        "ceiling": {"seconds": round(ceiling_s, 3), "raw_read_s": round(read_s, 3), "decode_check_s": round(check_s, 3),
                    "frames_per_s": round(frames / ceiling_s)},  # fmt: skip
        "ingest_1_process": runs[1],
        "ingest_2_processes": runs[2],
        "share_of_ceiling_1_process": round(ceiling_s / runs[1]["seconds"], 3),
        "speedup_2_processes": round(runs[1]["seconds"] / runs[2]["seconds"], 2),
    }


def _raw_read_seconds(store, keys: list[str]) -> float:
    """Wall seconds to read the clips `keys` and iterate their records, messages not decoded."""
    t0 = time.perf_counter()
    for key in keys:
        for _record in StreamReader(io.BytesIO(store.read_bytes(key))).records:
            pass  # iterating is the work: it decompresses the chunks and parses each record
    return time.perf_counter() - t0


def _decode_check_seconds(store, keys: list[str], settings: Settings) -> float:
    """Wall seconds of one decode-check per image of the clips (the images taken out untimed)."""
    images = []
    for key in keys:
        parsed = clip_contract.read_clip(store.read_bytes(key), classes=settings.classes, decode_check=False)
        images += [(f.image, f.format) for f in parsed.frames]
    t0 = time.perf_counter()
    for i, (img, fmt) in enumerate(images):
        clip_contract._check_image(img, fmt, settings.ingest.max_pixels, True, where=str(i))
    return time.perf_counter() - t0
