"""Step 1, planning: the clips in landing that no batch holds yet, deduplicated by content hash,
become one batch, committed with create-once claims (flywheel/ingest/__init__.py has the rules)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import chain, islice
from typing import TYPE_CHECKING

from flywheel import layout
from flywheel.clips import MAX_CLIP_BYTES
from flywheel.ingest.landing import (
    LandingScan,
    all_claimed_keys,
    fresh_clips,
    ingested_content,
    is_clip_key,
    list_batches,
    sha256,
    to_json,
)
from flywheel.ingest.validate import quarantine
from flywheel.store import ObjectInfo, Store

# a worker process imports this package: pyarrow, pydantic and tqdm load where used
if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class BatchPlan:
    batch_id: str
    clips: list[dict]  # {key, sha256, size}
    # {key, sha256, size, same_as (the key ingested), same_as_batch (its batch; None: this one)}
    duplicates: list[dict] = field(default_factory=list)


def plan_batch(
    store: Store,
    *,
    min_clips: int,
    max_clips: int,
    scan: LandingScan | None = None,
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
        return _plan(
            store,
            iter(fresh_clips(landing, all_claimed_keys(store))),
            min_clips,
            max_clips,
            max_clip_bytes,
        )[0]
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
    if not store.create(record, to_json(asdict(plan))):
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
    if not store.create(layout.batch_key(batch_id), to_json(manifest)):
        manifest = store.read_json(layout.batch_key(batch_id))
    store.delete(record)  # last: until here, the next plan_batch finishes this commit
    return manifest


def _claim(store: Store, key: str, batch_id: str) -> str:
    """Claim a landing clip for `batch_id`; returns the batch its claim names (ours, if this call or
    an earlier commit of the same id created it)."""
    if store.create(layout.claim_key(key), to_json({"batch_id": batch_id})):
        return batch_id
    return store.read_json(layout.claim_key(key))["batch_id"]


def _plan(
    store: Store,
    candidates: Iterator[ObjectInfo],
    min_clips: int,
    max_clips: int,
    max_clip_bytes: int = MAX_CLIP_BYTES,
) -> tuple[BatchPlan | None, int, set[str]]:
    """The batch of the first `candidates`, how many of them it took (0 with no batch) and the keys
    of those found deleted since they were listed; None below `min_clips`. Each clip is read once for
    its hash; content seen before is a duplicate, kept beside the clips and not counted in `max_clips`."""
    first = list(islice(candidates, max(min_clips, max_clips)))
    if len(first) < min_clips:
        return None, 0, set()
    clips, dups, took, gone = [], [], [], set()
    seen: dict[str, tuple[str, str | None]] = dict(ingested_content(store))  # batch None: this one
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
