"""Step 2, validation: every clip of a batch read once, the bad ones quarantined with their reason
(their claim released), the accepted list committed; and `requeue`, which brings a quarantined clip
back to landing."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

from flywheel import layout
from flywheel.ingest.landing import accepted_clip_ids, claim_holder, list_batches, to_json
from flywheel.ingest.reading import (
    check_clips,
    concat_frames,
    frames_parquet_options,
    map_clips,
    read_options,
)
from flywheel.store import Store, check_key, is_valid_key

# a worker process imports this package: pyarrow, pydantic and tqdm load where used
if TYPE_CHECKING:
    from flywheel.config import Settings


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
    ours = sorted(
        {batch_id, manifest.get("plan_id", batch_id)}
    )  # the claims of its clips name its plan
    # Only validation releases a claim of a committed clip. So the first one (no record of another
    # before it) knows every claim of its clips names its batch and reads none: a request per clip less.
    first = store.create(
        layout.validation_key(batch_id),
        to_json(
            {"batch_id": batch_id, "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
        ),
    )
    check = partial(check_clips, store, read_options(settings), None if first else ours, batch_id)
    accepted, bad, nbytes = [], [], 0
    started = time.perf_counter()
    checked = map_clips(check, manifest["clips"], settings, desc="validate", progress=progress)
    verdicts = [v for chunk, _ in checked for v in chunk]
    taken = accepted_clip_ids(store, batch_id)  # ids earlier batches made frames of
    for clip, (verdict, value, size) in zip(manifest["clips"], verdicts, strict=True):
        nbytes += size
        if (
            verdict == "ok" and value["clip_id"] in taken
        ):  # its frames would inherit that clip's labels
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
    table = concat_frames([t for _, t in checked])
    kept = pa.array([c["key"] for c in accepted], pa.string())
    table = table.filter(pc.is_in(table["clip_key"], kept))  # frames of accepted clips only
    ids = Counter(c["clip_id"] for c in accepted)
    # The same clip_id twice in one batch: keep the first, the clip contract makes ids unique.
    seen, unique, dropped = set(), [], []
    for c in accepted:
        (dropped if c["clip_id"] in seen else unique).append(c)
        seen.add(c["clip_id"])
    if dropped:
        table = table.filter(
            pc.invert(pc.is_in(table["clip_key"], pa.array([c["key"] for c in dropped])))
        )
    store.write_parquet(
        layout.staged_frames_key(batch_id), table, **frames_parquet_options()
    )  # as the frames file will be
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


def _release(store: Store, key: str, ours: set[str]) -> None:
    """Delete a clip's claim if it names this batch (another batch's claim is not ours)."""
    if claim_holder(store, key) in ours:
        store.delete(layout.claim_key(key))


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
    holder = claim_holder(store, landing)
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
