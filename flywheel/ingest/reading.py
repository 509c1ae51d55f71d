"""Reading clips, in worker processes: each clip read once, checked against the clip contract
(flywheel/clips.py), and the accepted ones' frames built where they were parsed. No side effects:
validation and the frames step decide what the verdicts mean."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from flywheel import layout
from flywheel.clips import MAX_CLIP_BYTES, ClipError, read_clip
from flywheel.ingest.landing import claim_holder, sha256
from flywheel.store import Store

# a worker process imports this package: pyarrow, pydantic and tqdm load where used
if TYPE_CHECKING:
    import pyarrow as pa

    from flywheel.config import Settings


# each process reads at least this many clips, else fewer processes: a worker's start is a large part
# of a smaller share (BENCHMARKS.md, ingest). Forked (Linux): ~0.02 s; a cold Python that imports
# this module: ~0.2 s.
MIN_CLIPS_PER_WORKER = {"fork": 32, "exec": 128}


def frames_parquet_options() -> dict:
    """How frames Parquet is written (the staged file and the committed one alike)."""
    from flywheel.data import schema

    return {
        "row_group_size": 1024,
        # encoded images neither compress nor repeat: zstd on them is CPU for nothing, on write and on read
        "compression": {c: ("none" if c == "image" else "zstd") for c in schema.FRAMES.names},
        "write_statistics": [c for c in schema.FRAMES.names if c != "image"],  # image stats bloat the footer
        "use_dictionary": [c for c in schema.FRAMES.names if c not in ("image", "frame_id", "timestamp_ns")],
    }  # fmt: skip


def read_options(settings: Settings) -> dict:
    """`read_clip`'s keyword arguments from the settings: plain values, sent to worker processes."""
    i = settings.ingest
    return {"classes": list(settings.classes), "max_pixels": i.max_pixels, "max_chunk_bytes": i.max_chunk_bytes,
            "max_clip_bytes": i.max_clip_bytes, "max_expansion": i.max_expansion, "resize": i.resize}  # fmt: skip


def check_clips(
    store: Store, options: dict, ours: list[str] | None, batch_id: str, clips: list[dict]
):
    """(verdict, value, bytes read) of each of `clips` and the frames table of the accepted ones;
    runs in a worker process, no side effects. `options`: `read_clip`'s keyword arguments; `ours`:
    the ids a claim of a clip of this batch names (None: every claim is ours, none is read). ok: the
    clip's entry; bad: (reason, detail); done: an earlier verdict."""
    verdicts, parsed, entries = [], [], []
    for clip in clips:
        verdict, value, size, clip_frames = check_clip(store, options, ours, batch_id, clip)
        verdicts.append((verdict, value, size))
        if verdict == "ok":
            parsed.append(clip_frames)
            entries.append(value)
    return verdicts, frames_of(parsed, entries, batch_id)


def check_clip(store: Store, options: dict, ours: list[str] | None, batch_id: str, clip: dict):
    """(verdict, value, bytes read, parsed clip) of one clip, as `check_clips` says."""
    key = clip["key"]
    if ours is not None and claim_holder(store, key) not in ours:
        return "done", _earlier_verdict(store, key, batch_id), 0, None
    limit = options.get("max_clip_bytes", MAX_CLIP_BYTES)
    if clip.get("size", 0) > limit:  # not read: memory is bounded by the limit, not by the upload
        return (
            "bad",
            (
                "too_large",
                f"the clip is {clip['size']} bytes, over the limit of {limit} (ingest.max_clip_bytes)",
            ),
            0,
            None,
        )
    try:
        data = store.read_bytes(key)
    except FileNotFoundError:  # moved since its claim was read (a rerun quarantined it, say)
        return "done", _earlier_verdict(store, key, batch_id), 0, None
    if clip.get("sha256") and len(data) <= limit and sha256(data) != clip["sha256"]:
        return "bad", ("changed_since_planned", f"the bytes read now are not the ones planned (sha256 "
                                                f"{clip['sha256'][:12]}...): uploaded again over the same name?"), len(data), None  # fmt: skip
    try:
        parsed = read_clip(data, **options)
    except ClipError as e:
        return "bad", (e.reason, e.detail), len(data), None
    entry = {**clip, "clip_id": parsed.meta.clip_id, "frames": len(parsed.frames)}
    return "ok", entry, len(data), parsed


def _earlier_verdict(store: Store, key: str, batch_id: str) -> dict:
    """Why a clip of this batch is no longer in landing under its claim: its quarantine reason from
    an earlier attempt, or what happened since."""
    reason = layout.reason_key(key)
    if store.exists(reason) and (record := store.read_json(reason))["batch_id"] == batch_id:
        return record
    if store.exists(key):  # its claim was released: quarantined, then uploaded again or requeued
        detail = "quarantined by this batch; back in landing since"
        return {"key": key, "reason": "released", "detail": detail}
    detail = "no longer in landing, and not quarantined by this batch"
    return {"key": key, "reason": "missing", "detail": detail}


def parse_accepted(store: Store, options: dict, batch_id: str, clips: list[dict]) -> pa.Table:
    # decode_check off: validate_batch decoded every image already
    parsed = [read_clip(store.read_bytes(c["key"]), **options, decode_check=False) for c in clips]
    return frames_of(parsed, clips, batch_id)


def frames_of(parsed: list, clips: list[dict], batch_id: str) -> pa.Table:
    """The frames table (schema.FRAMES) of parsed clips, `clips` their accepted entries. Built where
    the clips were parsed (a worker process, say), so that the process that gathers a batch only
    joins tables."""
    import pyarrow as pa

    from flywheel.data import schema

    cols: dict[str, list] = {name: [] for name in schema.FRAMES.names}
    for clip, p in zip(clips, parsed, strict=True):
        m, fs, n = p.meta, p.frames, len(p.frames)
        cols["frame_id"] += [f"{m.clip_id}/{f.camera}/{f.index}" for f in fs]
        for name, value in (("batch_id", batch_id), ("clip_key", clip["key"]), ("clip_id", m.clip_id),
                            ("vehicle_id", m.vehicle_id), ("trigger", m.trigger), ("recorded_at", m.recorded_at),
                            ("condition", m.extra.get("condition", ""))):  # fmt: skip
            cols[name] += [value] * n
        for name in (
            "camera",
            "timestamp_ns",
            "image",
            "format",
            "height",
            "width",
            "ground_truth",
        ):
            cols[name] += [getattr(f, name) for f in fs]
        cols["boxes"] += [None if f.boxes is None else [vars(b) for b in f.boxes] for f in fs]
    return pa.table(cols, schema=schema.FRAMES)


def concat_frames(tables: list[pa.Table]) -> pa.Table:
    """The frames tables of a batch's chunks as one (no copy)."""
    import pyarrow as pa

    from flywheel.data import schema

    return pa.concat_tables(tables) if tables else schema.FRAMES.empty_table()


def map_clips(
    fn: Callable, items: list, settings: Settings, *, desc: str, progress: bool | None
) -> list:
    """`[fn(chunk) for chunk in chunks]` over clips cut into small chunks, on `ingest.workers` processes
    (parsing and decoding hold the GIL), with a bar of the clips done (`desc`, shown as `progress`
    says): this process and `workers - 1` worker processes (`flywheel.workers`). One worker, or too
    few clips to pay for starting more: here, a chunk at a time."""
    from flywheel import progress as bars
    from flywheel.workers import START, map_chunks

    workers = min(
        settings.ingest.workers or os.cpu_count() or 1, len(items) // MIN_CLIPS_PER_WORKER[START]
    )
    with bars.bar(total=len(items), desc=desc, unit="clip", progress=progress) as bar:
        if workers > 1:
            return map_chunks(
                fn, items, workers, tick=bar.update, min_chunk=8
            )  # a table per chunk: not too many
        chunks = [
            items[i : i + 64] for i in range(0, len(items), 64)
        ]  # a table each: few, yet a moving bar
        return [_ticked(fn(chunk), bar, len(chunk)) for chunk in chunks]


def _ticked(result, bar, n: int):
    bar.update(n)
    return result
