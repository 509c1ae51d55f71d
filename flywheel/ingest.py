"""From landing to frames: plan fleet batches, validate and quarantine clips, write frames Parquet.

Three steps, each idempotent so a retried run does no harm:
1. `plan_batch`: the clips in landing that no batch holds yet, deduplicated by content hash,
   become one batch, committed as `batches/<id>.json` (the id is derived from its clips, so
   two planners that see the same clips make the same batch).
2. `validate_batch`: read every clip of a batch; bad ones move to `quarantine/` with a JSON
   reason beside them; the accepted list is committed as `batches/<id>.accepted.json`.
3. `write_frames`: the accepted clips become `frames/batch=<id>/part-0.parquet`.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa

from flywheel import layout, schema
from flywheel.clips import ClipError, read_clip
from flywheel.config import Settings
from flywheel.store import ObjectInfo, Store


def is_clip_key(key: str) -> bool:
    """Only `*.mcap` names are clips; partial uploads and hidden files are not."""
    name = key.rsplit("/", 1)[-1]
    return key.startswith(layout.LANDING) and name.endswith(".mcap") and not any(
        part.startswith(".") for part in key.split("/")
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- 1. planning


def list_batches(store: Store) -> list[dict]:
    """Every committed batch manifest, oldest first."""
    manifests = [store.read_json(o.key) for o in store.list(layout.BATCHES) if layout.is_batch_key(o.key)]
    return sorted(manifests, key=lambda m: (m["created_at"], m["batch_id"]))


def claimed(store: Store) -> tuple[set[str], set[str]]:
    """Landing keys and content hashes that some batch already holds."""
    keys, hashes = set(), set()
    for m in list_batches(store):
        for c in m["clips"] + m.get("duplicates", []):
            keys.add(c["key"])
            hashes.add(c["sha256"])
    return keys, hashes


def pending_clips(store: Store, claimed_keys: set[str] | None = None) -> list[ObjectInfo]:
    """Clips in landing that no batch holds yet, oldest first."""
    if claimed_keys is None:
        claimed_keys, _ = claimed(store)
    fresh = [o for o in store.list(layout.LANDING) if is_clip_key(o.key) and o.key not in claimed_keys]
    return sorted(fresh, key=lambda o: (o.mtime, o.key))


@dataclass(frozen=True)
class BatchPlan:
    batch_id: str
    clips: list[dict]  # {key, sha256, size}
    duplicates: list[dict] = field(default_factory=list)  # {key, sha256, size, same_as}


def plan_batch(store: Store, *, min_clips: int, max_clips: int) -> BatchPlan | None:
    """The next batch if at least `min_clips` new clips wait, else None. Does not commit it."""
    claimed_keys, claimed_hashes = claimed(store)
    fresh = pending_clips(store, claimed_keys)
    if len(fresh) < min_clips:
        return None
    clips, dups, seen = [], [], {h: "an earlier batch" for h in claimed_hashes}
    for o in fresh:
        if len(clips) >= max_clips:
            break
        digest = sha256(store.read_bytes(o.key))
        entry = {"key": o.key, "sha256": digest, "size": o.size}
        if digest in seen:  # the same content uploaded again: ingest it once
            dups.append({**entry, "same_as": seen[digest]})
        else:
            seen[digest] = o.key
            clips.append(entry)
    if len(clips) < min_clips and len(clips) < max_clips:
        return None
    newest = max(o.mtime for o in fresh[: len(clips) + len(dups)])
    stamp = datetime.fromtimestamp(newest, UTC).strftime("%Y%m%dT%H%M%S")
    digest = sha256("\n".join(sorted(c["key"] for c in clips)).encode())[:8]
    return BatchPlan(f"{stamp}-{digest}", clips, dups)


def commit_batch(store: Store, plan: BatchPlan) -> dict:
    """Write `batches/<id>.json` (idempotent: an existing manifest of the same id is kept)."""
    key = layout.batch_key(plan.batch_id)
    if store.exists(key):
        return store.read_json(key)
    manifest = {
        "batch_id": plan.batch_id,
        "created_at": datetime.now(UTC).isoformat(timespec="microseconds"),  # orders batches
        "clips": plan.clips,
        "duplicates": plan.duplicates,
    }
    store.write_json(key, manifest)
    return manifest


# ---------------------------------------------------------------- 2. validation


def quarantine(store: Store, key: str, *, reason: str, detail: str, batch_id: str, digest: str) -> str:
    """Move a landing clip to quarantine/ with `<clip>.reason.json` beside it; returns its new key."""
    target = layout.quarantine_key(key)
    store.write_json(
        layout.reason_key(key),
        {
            "key": key, "quarantined_as": target, "reason": reason, "detail": detail,
            "batch_id": batch_id, "sha256": digest,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )  # fmt: skip
    store.move(key, target)  # reason first: a clip in quarantine always has its reason
    return target


def validate_batch(store: Store, batch_id: str, settings: Settings) -> dict:
    """Read and check every clip of a batch; quarantine the bad ones; commit the accepted list."""
    manifest = store.read_json(layout.batch_key(batch_id))

    def check(clip: dict):  # runs on a worker thread: reads and parses, no side effects
        key = clip["key"]
        if not store.exists(key) and store.exists(layout.reason_key(key)):
            return "done", store.read_json(layout.reason_key(key)), 0  # quarantined by an earlier attempt
        data = store.read_bytes(key)
        try:
            parsed = read_clip(data, classes=settings.classes, max_pixels=settings.ingest.max_pixels)
        except ClipError as e:
            return "bad", e, len(data)
        return "ok", {**clip, "clip_id": parsed.meta.clip_id, "frames": len(parsed.frames)}, len(data)

    accepted, bad, nbytes = [], [], 0
    started = time.perf_counter()
    for clip, (verdict, value, size) in zip(manifest["clips"], _map(check, manifest["clips"], settings), strict=True):
        nbytes += size
        if verdict == "ok":
            accepted.append(value)
        elif verdict == "done":
            bad.append(value)
        else:
            quarantine(store, clip["key"], reason=value.reason, detail=value.detail, batch_id=batch_id,
                       digest=clip["sha256"])  # fmt: skip
            bad.append({"key": clip["key"], "reason": value.reason, "detail": value.detail})
    ids = Counter(c["clip_id"] for c in accepted)
    # The same clip_id twice in one batch: keep the first, the clip contract makes ids unique.
    seen, unique = set(), []
    for c in accepted:
        if c["clip_id"] not in seen:
            seen.add(c["clip_id"])
            unique.append(c)
    report = {
        "batch_id": batch_id,
        "accepted": unique,
        "quarantined": [{k: q[k] for k in ("key", "reason", "detail")} for q in bad],
        "duplicate_clip_ids": sorted(i for i, n in ids.items() if n > 1),
        "duplicate_uploads": manifest.get("duplicates", []),
        "bytes": nbytes,
        "seconds": round(time.perf_counter() - started, 3),
    }
    store.write_json(layout.accepted_key(batch_id), report)
    return report


def _map(fn, items: list, settings: Settings):
    """`map` on a few threads: reads, zstd and image decoding release the GIL."""
    if settings.ingest.workers <= 1 or len(items) < 2:
        return map(fn, items)
    with ThreadPoolExecutor(settings.ingest.workers) as pool:
        return list(pool.map(fn, items))


# ---------------------------------------------------------------- 3. frames


def frames_table(store: Store, batch_id: str, settings: Settings) -> pa.Table:
    """The frames of a batch's accepted clips as one Arrow table (schema.FRAMES)."""
    report = store.read_json(layout.accepted_key(batch_id))
    cols: dict[str, list] = {name: [] for name in schema.FRAMES.names}

    def parse(clip: dict):
        return read_clip(
            store.read_bytes(clip["key"]),
            classes=settings.classes,
            max_pixels=settings.ingest.max_pixels,
            resize=settings.ingest.resize,
            decode_check=False,  # validate_batch decoded every image already
        )

    for clip, parsed in zip(report["accepted"], _map(parse, report["accepted"], settings), strict=True):
        m = parsed.meta
        for f in parsed.frames:
            cols["frame_id"].append(f"{m.clip_id}/{f.camera}/{f.index}")
            cols["clip_id"].append(m.clip_id)
            cols["vehicle_id"].append(m.vehicle_id)
            cols["trigger"].append(m.trigger)
            cols["recorded_at"].append(m.recorded_at)
            cols["condition"].append(m.extra.get("condition", ""))
            cols["camera"].append(f.camera)
            cols["timestamp_ns"].append(f.timestamp_ns)
            cols["image"].append(f.image)
            cols["format"].append(f.format)
            cols["height"].append(f.height)
            cols["width"].append(f.width)
            cols["ground_truth"].append(f.ground_truth)
            cols["batch_id"].append(batch_id)
            cols["clip_key"].append(clip["key"])
    return pa.table(cols, schema=schema.FRAMES)


def write_frames(store: Store, batch_id: str, settings: Settings) -> dict:
    """Write `frames/batch=<id>/part-0.parquet` for a validated batch; returns its summary."""
    started = time.perf_counter()
    table = frames_table(store, batch_id, settings)
    nbytes = store.write_parquet(
        layout.frames_key(batch_id),
        table,
        row_group_size=1024,
        compression="zstd",
        write_statistics=[c for c in schema.FRAMES.names if c != "image"],  # image stats bloat the footer
        use_dictionary=[c for c in schema.FRAMES.names if c not in ("image", "frame_id", "timestamp_ns")],
    )
    return summarize_frames(table) | {
        "batch_id": batch_id,
        "key": layout.frames_key(batch_id),
        "bytes": nbytes,
        "seconds": round(time.perf_counter() - started, 3),
    }


def summarize_frames(table: pa.Table) -> dict:
    def counts(col: str) -> dict[str, int]:
        return dict(sorted(Counter(table.column(col).to_pylist()).items(), key=lambda kv: str(kv[0])))

    return {
        "frames": table.num_rows,
        "clips": len(set(table.column("clip_id").to_pylist())),
        "with_ground_truth": table.num_rows - table.column("ground_truth").null_count,
        "per_camera": counts("camera"),
        "per_condition": counts("condition"),
        "per_trigger": counts("trigger"),
        "per_vehicle": counts("vehicle_id"),
    }
