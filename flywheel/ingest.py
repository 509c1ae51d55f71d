"""From landing to frames: plan fleet batches, validate and quarantine clips, write frames Parquet.

Three steps, each idempotent so a retried run does no harm:
1. `plan_batch` + `commit_batch`: the clips in landing that no batch holds yet, deduplicated by
   content hash, become one batch (the id is derived from its clips, so two planners that see the
   same clips make the same batch). A commit writes the plan (`batches/<id>.plan.json`), claims
   each clip with a create-once `claims/<clip>` naming the plan, writes `batches/<id>.json`
   (create-once too) and deletes the plan. A clip another batch claimed first is dropped and the
   id is derived again from the clips kept; a planner left with none commits nothing (None). So
   two planners that saw different listings never share a clip. Killed anywhere in between, the
   plan record is still there: the next `plan_batch` returns it before anything new, and
   committing it again decides every claim as before (claims never change) and ends the job.
2. `validate_batch`: read every clip of a batch once (worker processes); bad ones move to
   `quarantine/` with a JSON reason beside them, and their claim is released; the frames of the
   accepted clips are staged and the accepted list is committed as `batches/<id>.accepted.json`.
   The first validation of a batch records its start (`batches/<id>.validation.json`) and reads
   no claim (none can be released before it); a later one reads each clip's claim, so that it
   leaves a clip quarantined and uploaded again since to the batch that takes it.
3. `write_frames`: the staged frames become `frames/batch=<id>/part-0.parquet`.

What may come back. A landing key is held while its claim exists: a clip of a batch (accepted or
not validated yet) or a duplicate upload. Quarantine releases the claim, so a fixed upload under
the same key is a new clip. Content is a duplicate when the same bytes were ingested under another
key (accepted by a validation, or in a batch not validated yet; a duplicate records which key, in
which batch): the bytes of a quarantined clip pass under a new key. `requeue` moves a quarantined
clip back to landing (or releases a duplicate whose original was quarantined).

One module over the usual size on purpose: planning, validation and requeue share the claim and
quarantine rules above; split apart, each would have to be read with the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from itertools import chain, islice
from typing import TYPE_CHECKING

from flywheel import layout
from flywheel.clips import MAX_CLIP_BYTES, ClipError, read_clip
from flywheel.store import ObjectInfo, Store, check_key, is_valid_key

if TYPE_CHECKING:  # a worker process imports this module: pyarrow, pydantic and tqdm load where used
    import pyarrow as pa

    from flywheel.config import Settings

# each process reads at least this many clips, else fewer processes: a worker's start is a large part
# of a smaller share (BENCHMARKS.md, ingest). Forked (Linux): ~0.02 s; a cold Python that imports
# this module: ~0.2 s.
MIN_CLIPS_PER_WORKER = {"fork": 32, "exec": 128}


def frames_parquet_options() -> dict:
    """How frames Parquet is written (the staged file and the committed one alike)."""
    from flywheel import schema

    return {
        "row_group_size": 1024,
        # encoded images neither compress nor repeat: zstd on them is CPU for nothing, on write and on read
        "compression": {c: ("none" if c == "image" else "zstd") for c in schema.FRAMES.names},
        "write_statistics": [c for c in schema.FRAMES.names if c != "image"],  # image stats bloat the footer
        "use_dictionary": [c for c in schema.FRAMES.names if c not in ("image", "frame_id", "timestamp_ns")],
    }  # fmt: skip


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


def claimed(store: Store) -> tuple[set[str], dict[str, tuple[str, str]]]:
    """Landing keys that some batch holds (a claim), and the content already ingested: sha256 ->
    (key, batch id) of each clip a validation accepted, or a batch not validated yet holds."""
    return _claimed_keys(store), _ingested(store)


def pending_clips(store: Store, claimed_keys: set[str] | None = None) -> list[ObjectInfo]:
    """Clips in landing that no batch holds yet, oldest first. Names that cannot be store keys are
    not among them: `plan_batch` quarantines those."""
    if claimed_keys is None:
        claimed_keys = _claimed_keys(store)
    return _fresh(store.list(layout.LANDING), claimed_keys)


def _fresh(landing: list[ObjectInfo], claimed_keys: set[str]) -> list[ObjectInfo]:
    """The clips of a landing listing that no claim holds, oldest first."""
    fresh = [
        o for o in landing if is_clip_key(o.key) and not o.bad_key and o.key not in claimed_keys
    ]
    return sorted(fresh, key=lambda o: (o.mtime, o.key))


@dataclass(frozen=True)
class BatchPlan:
    batch_id: str
    clips: list[dict]  # {key, sha256, size}
    # {key, sha256, size, same_as (the key ingested), same_as_batch (its batch; None: this one)}
    duplicates: list[dict] = field(default_factory=list)


def plan_batch(
    store: Store, *, min_clips: int, max_clips: int, scan: LandingScan | None = None,
    max_clip_bytes: int = MAX_CLIP_BYTES,
) -> BatchPlan | None:
    """The next batch to commit, or None. Does not commit it.

    A commit cut short (its plan record is still there) comes first, whatever its size: committing
    it again finishes it. Else the new clips, if at least `min_clips` wait. A landing name that
    cannot be a store key is quarantined here (`bad_key`): no batch could read it.

    Which clips: without `scan`, all of landing is listed and the oldest go first. With one (the
    sensor's), landing is read through it a page at a time, in its order, only as far as this batch
    needs; it records how many clips the plan took and where the next scan goes on.
    """
    unfinished = _unfinished_plan(store)
    if unfinished is not None:
        return unfinished
    if scan is None:
        landing = store.list(layout.LANDING)
        _quarantine_bad_names(store, landing)
        return _plan(store, iter(_fresh(landing, _claimed_keys(store))), min_clips, max_clips, max_clip_bytes)[0]
    plan, scan.taken, gone = _plan(store, iter(scan), min_clips, max_clips, max_clip_bytes)
    scan.gone |= gone
    _quarantine_bad_names(store, scan.bad)
    return plan


def _batch_id(stamp: str, entries: list[dict]) -> str:
    """`<newest upload>-<hash of the keys>`: the same clips make the same id."""
    keys = "\n".join(sorted(e["key"] for e in entries))
    return f"{stamp}-{sha256(keys.encode())[:8]}"


def _unfinished_plan(store: Store) -> BatchPlan | None:
    """The oldest plan whose commit was cut short; records of commits that got as far as their
    manifest are deleted on the way."""
    plans = [o.key for o in store.list(layout.BATCHES) if layout.is_plan_key(o.key)]
    if not plans:
        return None
    committed = {m.get("plan_id") for m in list_batches(store)}
    for key in plans:
        plan = BatchPlan(**store.read_json(key))
        if plan.batch_id not in committed:
            return plan
        store.delete(key)
    return None


def commit_batch(store: Store, plan: BatchPlan) -> dict | None:
    """Claim the clips of `plan` and write `batches/<id>.json`; returns the manifest, or None when
    other batches claimed every clip first. Committing a plan of the same id again gives the same
    manifest (or None again)."""
    record = layout.plan_key(plan.batch_id)
    if not store.create(record, _json(asdict(plan))):
        try:  # same id: the plan that a first committer recorded is the one every committer finishes
            plan = BatchPlan(**store.read_json(record))
        except FileNotFoundError:  # that commit just ended; its claims decide ours the same way
            pass
    holders = {c["key"]: _claim(store, c["key"], plan.batch_id) for c in plan.clips}
    clips = [c for c in plan.clips if holders[c["key"]] == plan.batch_id]
    if not clips:
        store.delete(record)
        return None
    dups = []
    for d in plan.duplicates:
        if _claim(store, d["key"], plan.batch_id) == plan.batch_id:
            taken = holders.get(d["same_as"], plan.batch_id) != plan.batch_id
            # an original that another batch took: say which
            dups.append({**d, "same_as_batch": holders[d["same_as"]]} if taken else d)
    batch_id = _batch_id(plan.batch_id.partition("-")[0], clips + dups)
    manifest = {
        "batch_id": batch_id,
        "plan_id": plan.batch_id,  # what its claims name
        "created_at": datetime.now(UTC).isoformat(timespec="microseconds"),  # orders batches
        "clips": clips,
        "duplicates": dups,
    }
    if not store.create(layout.batch_key(batch_id), _json(manifest)):
        manifest = store.read_json(layout.batch_key(batch_id))
    store.delete(record)  # last: until here, the next plan_batch finishes this commit
    return manifest


def _claim(store: Store, key: str, batch_id: str) -> str:
    """Claim a landing clip for `batch_id`; returns the batch its claim names (ours, if this call or
    an earlier commit of the same id created it)."""
    if store.create(layout.claim_key(key), _json({"batch_id": batch_id})):
        return batch_id
    return store.read_json(layout.claim_key(key))["batch_id"]


def _holder(store: Store, key: str) -> str | None:
    """The batch that a landing clip's claim names, None if it has no claim."""
    try:
        return store.read_json(layout.claim_key(key))["batch_id"]
    except FileNotFoundError:
        return None


def _json(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode()


# ---------------------------------------------------------------- 2. validation


def quarantine(
    store: Store, key: str, *, reason: str, detail: str, batch_id: str | None, digest: str | None,
    uploaded_as: str | None = None,
) -> str:  # fmt: skip
    """Move a landing clip to quarantine/ with `<clip>.reason.json` beside it; returns its new key.

    `uploaded_as`: the name the fleet gave it when that is no valid key (`key` is then its
    `layout.sanitized_key`, and the reason records the name as uploaded).
    """
    target = layout.quarantine_key(key)
    store.write_json(
        layout.reason_key(key),
        {
            "key": uploaded_as or key, "quarantined_as": target, "reason": reason, "detail": detail,
            "batch_id": batch_id, "sha256": digest,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )  # fmt: skip
    # reason first: a clip in quarantine always has its reason
    if uploaded_as is None:
        store.move(key, target)
    else:
        store.move_bad_key(uploaded_as, target)
    return target


def validate_batch(
    store: Store, batch_id: str, settings: Settings, *, progress: bool | None = None
) -> dict:
    """Read and check every clip of a batch; quarantine the bad ones; commit the accepted list.

    One pass: each clip is read once, each message decoded once and each image decode-checked once,
    and the frames of the accepted clips are staged (`staging/frames/<id>.parquet`) for the frames
    step to commit, so nothing is parsed twice. Clips are read by `ingest.workers` processes.
    `progress`: a bar of the clips read, on stderr (None: as `flywheel.progress` says)."""
    import pyarrow as pa
    import pyarrow.compute as pc  # both before any worker forks: a worker then has them at no cost

    manifest = store.read_json(layout.batch_key(batch_id))
    ours = sorted({batch_id, manifest.get("plan_id", batch_id)})  # the claims of its clips name its plan
    # Only validation releases a claim of a committed clip. So the first one (no record of another
    # before it) knows every claim of its clips names its batch and reads none: a request per clip less.
    first = store.create(layout.validation_key(batch_id), _json({"batch_id": batch_id, "started_at": datetime.now(UTC).isoformat(timespec="seconds")}))
    check = partial(_check_clips, store, _read_options(settings), None if first else ours, batch_id)
    accepted, bad, nbytes = [], [], 0
    started = time.perf_counter()
    checked = _map(check, manifest["clips"], settings, desc="validate", progress=progress)
    verdicts = [v for chunk, _ in checked for v in chunk]
    taken = _accepted_clip_ids(store, batch_id)  # ids earlier batches made frames of
    for clip, (verdict, value, size) in zip(manifest["clips"], verdicts, strict=True):
        nbytes += size
        if verdict == "ok" and value["clip_id"] in taken:  # its frames would inherit that clip's labels
            verdict, value = "bad", ("duplicate_clip_id", f"clip_id {value['clip_id']!r} was ingested before from "
                                     f"{taken[value['clip_id']]}: a clip_id names one clip, across uploads")  # fmt: skip
        if verdict == "ok":
            accepted.append(value)
            continue
        if verdict == "bad":
            reason, detail = value
            quarantine(store, clip["key"], reason=reason, detail=detail, batch_id=batch_id,
                       digest=clip["sha256"])  # fmt: skip
            value = {"key": clip["key"], "reason": reason, "detail": detail}
        bad.append(value)
        _release(store, clip["key"], set(ours))  # a fixed upload under its key is a new clip
    table = _concat([t for _, t in checked])
    kept = pa.array([c["key"] for c in accepted], pa.string())
    table = table.filter(pc.is_in(table["clip_key"], kept))  # frames of accepted clips only
    ids = Counter(c["clip_id"] for c in accepted)
    # The same clip_id twice in one batch: keep the first, the clip contract makes ids unique.
    seen, unique, dropped = set(), [], []
    for c in accepted:
        (dropped if c["clip_id"] in seen else unique).append(c)
        seen.add(c["clip_id"])
    if dropped:
        table = table.filter(pc.invert(pc.is_in(table["clip_key"], pa.array([c["key"] for c in dropped]))))
    store.write_parquet(layout.staged_frames_key(batch_id), table, **frames_parquet_options())  # as the frames file will be
    report = {
        "batch_id": batch_id,
        "accepted": unique,
        "quarantined": [{k: q[k] for k in ("key", "reason", "detail")} for q in bad],
        "duplicate_clip_ids": sorted(i for i, n in ids.items() if n > 1),
        "duplicate_uploads": manifest.get("duplicates", []),
        "bytes": nbytes,
        "staged_frames": table.num_rows,
        "seconds": round(time.perf_counter() - started, 3),
    }
    store.write_json(layout.accepted_key(batch_id), report)  # last: the validation's commit
    return report


def _read_options(settings: Settings) -> dict:
    """`read_clip`'s keyword arguments from the settings: plain values, sent to worker processes."""
    i = settings.ingest
    return {"classes": list(settings.classes), "max_pixels": i.max_pixels, "max_chunk_bytes": i.max_chunk_bytes,
            "max_clip_bytes": i.max_clip_bytes, "max_expansion": i.max_expansion, "resize": i.resize}  # fmt: skip


def _check_clips(store: Store, options: dict, ours: list[str] | None, batch_id: str, clips: list[dict]):
    """(verdict, value, bytes read) of each of `clips` and the frames table of the accepted ones;
    runs in a worker process, no side effects. `options`: `read_clip`'s keyword arguments; `ours`:
    the ids a claim of a clip of this batch names (None: every claim is ours, none is read). ok: the
    clip's entry; bad: (reason, detail); done: an earlier verdict."""
    verdicts, parsed, entries = [], [], []
    for clip in clips:
        verdict, value, size, clip_frames = _check_clip(store, options, ours, batch_id, clip)
        verdicts.append((verdict, value, size))
        if verdict == "ok":
            parsed.append(clip_frames)
            entries.append(value)
    return verdicts, _frames_of(parsed, entries, batch_id)


def _check_clip(store: Store, options: dict, ours: list[str] | None, batch_id: str, clip: dict):
    """(verdict, value, bytes read, parsed clip) of one clip, as `_check_clips` says."""
    key = clip["key"]
    if ours is not None and _holder(store, key) not in ours:
        return "done", _earlier_verdict(store, key, batch_id), 0, None
    limit = options.get("max_clip_bytes", MAX_CLIP_BYTES)
    if clip.get("size", 0) > limit:  # not read: memory is bounded by the limit, not by the upload
        return "bad", ("too_large", f"the clip is {clip['size']} bytes, over the limit of {limit} (ingest.max_clip_bytes)"), 0, None
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


def _release(store: Store, key: str, ours: set[str]) -> None:
    """Delete a clip's claim if it names this batch (another batch's claim is not ours)."""
    if _holder(store, key) in ours:
        store.delete(layout.claim_key(key))


def _map(fn: Callable, items: list, settings: Settings, *, desc: str, progress: bool | None) -> list:
    """`[fn(chunk) for chunk in chunks]` over clips cut into small chunks, on `ingest.workers` processes
    (parsing and decoding hold the GIL), with a bar of the clips done (`desc`, shown as `progress`
    says): this process and `workers - 1` worker processes (`flywheel.workers`). One worker, or too
    few clips to pay for starting more: here, a chunk at a time."""
    from flywheel import progress as bars
    from flywheel.workers import START, map_chunks

    workers = min(settings.ingest.workers or os.cpu_count() or 1, len(items) // MIN_CLIPS_PER_WORKER[START])
    with bars.bar(total=len(items), desc=desc, unit="clip", progress=progress) as bar:
        if workers > 1:
            return map_chunks(fn, items, workers, tick=bar.update, min_chunk=8)  # a table per chunk: not too many
        chunks = [items[i : i + 64] for i in range(0, len(items), 64)]  # a table each: few, yet a moving bar
        return [_ticked(fn(chunk), bar, len(chunk)) for chunk in chunks]


def _ticked(result, bar, n: int):
    bar.update(n)
    return result


# ---------------------------------------------------------------- re-admission


def requeue(store: Store, key: str) -> dict:
    """Bring a quarantined clip back: move it to landing, remove its reason and any claim still on
    its key, so that the next batch takes it again. Also releases a duplicate upload whose claim
    holds it (its original was quarantined, say). `key`: its landing key (as uploaded, even when
    that was no valid key) or its quarantine key.
    Returns {"moved": [(from, to)], "removed": [keys]}.
    """
    if key.startswith(layout.QUARANTINE):
        landing = layout.landing_key_of(key.removesuffix(layout.REASON_SUFFIX))
    elif key.startswith(layout.LANDING):
        landing = key if is_valid_key(key) else layout.sanitized_key(key)
    else:
        raise ValueError(f"cannot requeue {key!r}: give a clip's key under landing/ or quarantine/")
    source = layout.quarantine_key(check_key(landing))
    reason, claim = layout.reason_key(landing), layout.claim_key(landing)
    moved, removed = [], []
    if store.exists(source):
        if store.exists(landing):
            raise ValueError(
                f"cannot requeue {source!r}: {landing!r} holds a newer upload (ingested on its "
                "own); delete one of the two first"
            )
        store.move(source, landing)
        moved.append((source, landing))
    if store.exists(reason):  # after the move: a clip in quarantine always has its reason
        store.delete(reason)
        removed.append(reason)
    holder = _holder(store, landing)
    if holder is not None and not (moved or removed):
        batches = [m for m in list_batches(store) if holder in (m["batch_id"], m.get("plan_id"))]
        if not batches:
            raise ValueError(f"cannot requeue {landing!r}: batch {holder} is committing it now")
        if landing not in {d["key"] for d in batches[0]["duplicates"]}:
            raise ValueError(
                f"cannot requeue {landing!r}: it is ingested in batch {batches[0]['batch_id']}, "
                "not quarantined"
            )
    if holder is not None:
        store.delete(claim)
        removed.append(claim)
    if not (moved or removed):
        raise ValueError(
            f"cannot requeue {key!r}: nothing to requeue (not in quarantine/, no batch holds it)"
        )
    return {"moved": moved, "removed": removed}


# ---------------------------------------------------------------- 3. frames


def frames_table(
    store: Store, batch_id: str, settings: Settings, *, progress: bool | None = None
) -> pa.Table:
    """The frames of a batch's accepted clips as one Arrow table (schema.FRAMES), parsed again from
    the clips: for a batch whose validation staged no frames. `progress`: a bar of the clips read."""
    import pyarrow  # noqa: F401  (before any worker forks: a worker then has it at no cost)

    report = store.read_json(layout.accepted_key(batch_id))
    parse = partial(_parse_accepted, store, _read_options(settings), batch_id)
    return _concat(_map(parse, report["accepted"], settings, desc="frames", progress=progress))


def _parse_accepted(store: Store, options: dict, batch_id: str, clips: list[dict]) -> pa.Table:
    # decode_check off: validate_batch decoded every image already
    parsed = [read_clip(store.read_bytes(c["key"]), **options, decode_check=False) for c in clips]
    return _frames_of(parsed, clips, batch_id)


def _frames_of(parsed: list, clips: list[dict], batch_id: str) -> pa.Table:
    """The frames table (schema.FRAMES) of parsed clips, `clips` their accepted entries. Built where
    the clips were parsed (a worker process, say), so that the process that gathers a batch only
    joins tables."""
    import pyarrow as pa

    from flywheel import schema

    cols: dict[str, list] = {name: [] for name in schema.FRAMES.names}
    for clip, p in zip(clips, parsed, strict=True):
        m, fs, n = p.meta, p.frames, len(p.frames)
        cols["frame_id"] += [f"{m.clip_id}/{f.camera}/{f.index}" for f in fs]
        for name, value in (("batch_id", batch_id), ("clip_key", clip["key"]), ("clip_id", m.clip_id),
                            ("vehicle_id", m.vehicle_id), ("trigger", m.trigger), ("recorded_at", m.recorded_at),
                            ("condition", m.extra.get("condition", ""))):  # fmt: skip
            cols[name] += [value] * n
        for name in ("camera", "timestamp_ns", "image", "format", "height", "width", "ground_truth"):
            cols[name] += [getattr(f, name) for f in fs]
    return pa.table(cols, schema=schema.FRAMES)


def _concat(tables: list[pa.Table]) -> pa.Table:
    """The frames tables of a batch's chunks as one (no copy)."""
    import pyarrow as pa

    from flywheel import schema

    return pa.concat_tables(tables) if tables else schema.FRAMES.empty_table()


def write_frames(
    store: Store, batch_id: str, settings: Settings, *, progress: bool | None = None
) -> dict:
    """Write `frames/batch=<id>/part-0.parquet` for a validated batch; returns its summary.

    The frames its validation staged are committed as they are; a batch validated without staging
    (or whose staged file is gone) is parsed again. `progress`: a bar of the clips read."""
    started = time.perf_counter()
    report = store.read_json(layout.accepted_key(batch_id))
    staged, key = layout.staged_frames_key(batch_id), layout.frames_key(batch_id)
    if store.exists(staged) and store.parquet_file(staged).metadata.num_rows == report.get("staged_frames"):
        store.move(staged, key)  # a rename on a disk, a server-side copy on S3: no parse, no rewrite
        source = "staged by the validation (one pass)"
    else:
        table = frames_table(store, batch_id, settings, progress=progress)
        store.write_parquet(key, table, **frames_parquet_options())
        source = "parsed again"
    from flywheel import schema

    table = store.read_parquet(key, columns=[c for c in schema.FRAMES.names if c != "image"])
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


# ---------------------------------------------------------------- planning: helpers, landing a page at a time

LIST_PAGE = 1000  # keys per listing request of a `LandingScan` (the most S3 gives)


class LandingScan:
    """Landing a page at a time from a position: the clips no claim holds, from just after the key
    `after` to the end of landing, then from its start up to `after`, in key order (a round). A page
    is listed only when the taker reaches it, beside the claims of its key range (`claims/<x>` mirrors
    `landing/<x>`, so both lists run in step): taking a batch of 500 with 100k clips waiting lists
    about 500 keys of each, not 100k.

    A round, not "the keys after the last one seen": vehicles name their uploads, so a new clip may
    sort before the position. A round lists every key once, so such a clip is taken when the round
    comes to it, at the latest once the clips ahead of it are batched; and since claims are created
    once, two batches never share a clip, whatever each planner listed.

    `max_pages`: at most that many pages of landing (None: no bound). A landing that keeps every clip
    ever ingested grows without end, and a tick with fewer new clips than a batch needs would list all
    of it; bounded, such a round is spread over several scans. The clips a cut scan gave out are
    `carry`: the next scan, made with `seen=carry` and `after=` this one's `after`, gives them first
    and goes on listing from where this one stopped. A carried clip deleted since drops out when the
    plan reads it; one that another planner claimed since, when a listing passes it (if the plan
    took it first, its claim keeps it out of this batch).

    After `plan_batch`: `taken`, `after` (where the next scan starts), `carry`, and `waiting` (exact
    when `complete`, else a lower bound).
    """

    def __init__(self, store: Store, after: str = "", *, page: int | None = None, max_pages: int | None = None,
                 seen: Iterable[ObjectInfo] = ()) -> None:  # fmt: skip
        if after and not after.startswith(layout.LANDING):
            raise ValueError(f"a landing scan starts after a key under {layout.LANDING!r}, got {after!r}")
        if max_pages is not None and max_pages < 1:
            raise ValueError(f"a landing scan lists at least one page, got max_pages={max_pages}")
        self.store, self.start, self.page, self.max_pages = store, after, page or LIST_PAGE, max_pages
        self.seen = [o for o in seen if is_clip_key(o.key) and not o.bad_key]
        self._carried = {o.key for o in self.seen}
        self.fresh = len(self.seen)  # the carried clips and the unclaimed ones on the pages listed so far
        self.taken = 0  # the first `taken` clips given out went into the plan (set by plan_batch)
        self.gone: set[str] = set()  # carried clips found claimed, and clips the plan found deleted
        self.complete = False  # every landing key was listed: `fresh` counts all the clips waiting
        self.pages = 0  # pages of landing listed
        self.bad: list[ObjectInfo] = []  # unclaimed uploads whose name is no key, for quarantine
        self._given: list[ObjectInfo] = []
        self._listed_to = after  # the last landing key listed

    @property
    def after(self) -> str:
        """Where the next scan starts: after the last listed clip the plan took; with no plan, where
        this scan stopped listing (the start again after a whole round)."""
        taken = [o.key for o in self._given[: self.taken] if o.key not in self._carried]
        if taken:
            return taken[-1]
        return self.start if self.taken or self.complete else self._listed_to

    @property
    def carry(self) -> list[ObjectInfo]:
        """The clips the next scan gives first: with no plan and landing not all listed, every clip
        this one gave out (fewer than a batch needs, or duplicates); else the carried ones the plan
        did not take."""
        if not self.taken:  # not iterated at all (the plan was a commit cut short): the clips it was given
            return [] if self.complete else [o for o in self._given or self.seen if o.key not in self.gone]
        return [o for o in self._given[self.taken :] if o.key in self._carried and o.key not in self.gone]

    @property
    def waiting(self) -> int:
        """Clips seen that the plan did not take (nor found deleted or claimed since): all that wait if
        `complete`, else at least that many."""
        taken = {o.key for o in self._given[: self.taken]}
        return self.fresh - self.taken - len(self.gone - taken)

    def __iter__(self) -> Iterator[ObjectInfo]:
        parts = [(self.start, None), ("", self.start)] if self.start else [("", None)]
        listed = (o for i, (lo, hi) in enumerate(parts) for o in self._clips(lo, hi, last=i == len(parts) - 1))
        for o in chain(self.seen, listed):
            self._given.append(o)
            yield o

    def _clips(self, lo: str, hi: str | None, *, last: bool) -> Iterator[ObjectInfo]:
        """The unclaimed clips with `lo < key <= hi` (None: no upper bound), a page at a time, while
        the page budget lasts."""
        claims = self._claimed(lo)
        claim: str | None = ""  # the next claimed key at or after the clip at hand; "": none read yet
        after, more = lo, True
        while more and (self.max_pages is None or self.pages < self.max_pages):
            objs, more = self.store.list_after(layout.LANDING, after, self.page)
            self.pages += 1
            after = objs[-1].key if objs else after
            if hi is not None and objs and objs[-1].key >= hi:
                objs, more = [o for o in objs if o.key <= hi], False
            if objs:
                self._listed_to = objs[-1].key
            if hi is None and not more:  # the end of landing: a scan cut from here on goes on from its start
                self._listed_to = ""
            fresh = []
            for o in objs:
                if not is_clip_key(o.key):
                    continue
                while claim is not None and claim < o.key:
                    claim = next(claims, None)
                if o.key in self._carried:  # given out first; claimed since (another planner): not carried on
                    if claim == o.key:
                        self.gone.add(o.key)
                elif claim != o.key:
                    (self.bad if o.bad_key else fresh).append(o)
            self.fresh += len(fresh)
            self.complete = last and not more
            yield from fresh

    def _claimed(self, lo: str) -> Iterator[str]:
        """The landing keys after `lo` that a claim holds, in key order, a page of claims at a time."""
        after, more = layout.claim_key(lo) if lo else "", True
        while more:
            objs, more = self.store.list_after(layout.CLAIMS, after, self.page)
            after = objs[-1].key if objs else after
            yield from (layout.clip_key_of_claim(o.key) for o in objs)


def _plan(
    store: Store, candidates: Iterator[ObjectInfo], min_clips: int, max_clips: int, max_clip_bytes: int = MAX_CLIP_BYTES
) -> tuple[BatchPlan | None, int, set[str]]:
    """The batch of the first `candidates`, how many of them it took (0 with no batch) and the keys
    of those found deleted since they were listed; None below `min_clips`. Each clip is read once for
    its hash; content seen before is a duplicate, kept beside the clips and not counted in `max_clips`."""
    first = list(islice(candidates, max(min_clips, max_clips)))
    if len(first) < min_clips:
        return None, 0, set()
    clips, dups, took, gone = [], [], [], set()
    seen: dict[str, tuple[str, str | None]] = dict(_ingested(store))  # batch None: this one
    for o in chain(first, candidates):
        if len(clips) >= max_clips:
            break
        took.append(o)
        if o.size > max_clip_bytes:  # not read: the batch's validation quarantines it (too_large)
            clips.append({"key": o.key, "sha256": None, "size": o.size})
            continue
        try:
            digest = sha256(store.read_bytes(o.key))
        except FileNotFoundError:  # deleted since it was listed (or carried): nothing to batch
            gone.add(o.key)
            continue
        entry = {"key": o.key, "sha256": digest, "size": o.size}
        if digest in seen:  # the same content uploaded again: ingest it once, and say where it is
            dups.append({**entry, "same_as": seen[digest][0], "same_as_batch": seen[digest][1]})
        else:
            seen[digest] = (o.key, None)
            clips.append(entry)
    if len(clips) < min_clips and len(clips) < max_clips:
        return None, 0, gone
    stamp = datetime.fromtimestamp(max(o.mtime for o in took), UTC).strftime("%Y%m%dT%H%M%S")
    return BatchPlan(_batch_id(stamp, clips + dups), clips, dups), len(took), gone


def _quarantine_bad_names(store: Store, listed: Iterable[ObjectInfo]) -> None:
    """Quarantine the uploads of a landing listing whose name cannot be a store key."""
    for o in listed:
        if o.bad_key and is_clip_key(o.key):
            detail = f"{o.key!r} cannot be a store key: name uploads with [A-Za-z0-9._=-] and '/'"
            quarantine(store, layout.sanitized_key(o.key), uploaded_as=o.key, reason="bad_key",
                       detail=detail, batch_id=None, digest=None)  # fmt: skip


def _claimed_keys(store: Store) -> set[str]:
    """Every landing key that a claim holds (lists all of claims/)."""
    return {layout.clip_key_of_claim(o.key) for o in store.list(layout.CLAIMS)}


def _accepted_clip_ids(store: Store, batch_id: str) -> dict[str, str]:
    """clip_id -> its key, of every clip a validation of another batch accepted."""
    out: dict[str, str] = {}
    for o in store.list(layout.BATCHES):
        if layout.is_batch_key(o.key) and (other := layout.batch_id_of(o.key)) != batch_id:
            report = layout.accepted_key(other)
            if store.exists(report):
                for c in store.read_json(report)["accepted"]:
                    out.setdefault(c["clip_id"], c["key"])
    return out


def _ingested(store: Store) -> dict[str, tuple[str, str]]:
    """sha256 -> (key, batch id) of each clip a validation accepted, or a batch not validated yet
    holds; the oldest batch first."""
    listed = {o.key for o in store.list(layout.BATCHES)}
    ingested: dict[str, tuple[str, str]] = {}
    for key in sorted(listed):  # oldest batch first: ids start with their time
        if layout.is_batch_key(key):
            batch_id = layout.batch_id_of(key)
            report = layout.accepted_key(batch_id)  # once validated, what it accepted
            if report in listed:
                clips = store.read_json(report)["accepted"]
            else:
                clips = store.read_json(key)["clips"]
            for c in clips:
                ingested.setdefault(c["sha256"], (c["key"], batch_id))
    return ingested
