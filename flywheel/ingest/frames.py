"""Step 3, frames: the staged frames of a validated batch become `frames/batch=<id>/part-0.parquet`
(parsed again when nothing was staged), with a summary for the UI."""

from __future__ import annotations

import time
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING

from flywheel import layout
from flywheel.ingest.reading import (
    concat_frames,
    frames_parquet_options,
    map_clips,
    parse_accepted,
    read_options,
)
from flywheel.store import Store

# a worker process imports this package: pyarrow, pydantic and tqdm load where used
if TYPE_CHECKING:
    import pyarrow as pa

    from flywheel.config import Settings


def frames_table(
    store: Store, batch_id: str, settings: Settings, *, progress: bool | None = None
) -> pa.Table:
    """The frames of a batch's accepted clips as one Arrow table (schema.FRAMES), parsed again from
    the clips: for a batch whose validation staged no frames. `progress`: a bar of the clips read."""
    import pyarrow  # noqa: F401  (before any worker forks: a worker then has it at no cost)

    report = store.read_json(layout.accepted_key(batch_id))
    parse = partial(parse_accepted, store, read_options(settings), batch_id)
    return concat_frames(
        map_clips(parse, report["accepted"], settings, desc="frames", progress=progress)
    )


def write_frames(
    store: Store, batch_id: str, settings: Settings, *, progress: bool | None = None
) -> dict:
    """Write `frames/batch=<id>/part-0.parquet` for a validated batch; returns its summary.

    The frames its validation staged are committed as they are; a batch validated without staging
    (or whose staged file is gone) is parsed again. `progress`: a bar of the clips read."""
    started = time.perf_counter()
    report = store.read_json(layout.accepted_key(batch_id))
    staged, key = layout.staged_frames_key(batch_id), layout.frames_key(batch_id)
    if store.exists(staged) and store.parquet_file(staged).metadata.num_rows == report.get(
        "staged_frames"
    ):
        store.move(
            staged, key
        )  # a rename on a disk, a server-side copy on S3: no parse, no rewrite
        source = "staged by the validation (one pass)"
    else:
        table = frames_table(store, batch_id, settings, progress=progress)
        store.write_parquet(key, table, **frames_parquet_options())
        source = "parsed again"
    from flywheel.data import schema

    # a batch staged before frames had a `boxes` column (an upgrade mid-batch) lacks it: read what is there
    present = set(store.parquet_file(key).schema_arrow.names)
    table = store.read_parquet(key, columns=[c for c in schema.FRAMES.names if c != "image" and c in present])
    nbytes = next(o.size for o in store.list(key) if o.key == key)
    return summarize_frames(table) | {
        "batch_id": batch_id,
        "key": layout.frames_key(batch_id),
        "bytes": nbytes,
        "source": source,
        "seconds": round(time.perf_counter() - started, 3),
    }


def summarize_frames(table: pa.Table) -> dict:
    def counts(col: str) -> dict[str, int]:
        return dict(
            sorted(Counter(table.column(col).to_pylist()).items(), key=lambda kv: str(kv[0]))
        )

    return {
        "frames": table.num_rows,
        "clips": len(set(table.column("clip_id").to_pylist())),
        "with_ground_truth": table.num_rows - table.column("ground_truth").null_count,
        "with_boxes": table.num_rows - table.column("boxes").null_count if "boxes" in table.column_names else 0,
        "per_camera": counts("camera"),
        "per_condition": counts("condition"),
        "per_trigger": counts("trigger"),
        "per_vehicle": counts("vehicle_id"),
    }
