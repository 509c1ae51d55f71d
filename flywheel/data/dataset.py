"""Versioned, sharded Parquet datasets (DESIGN.md §3).

Layout under the store (keys in flywheel/layout.py):
    datasets/<name>/v<N>/manifest.json                       the version; written last
    datasets/<name>/v<N>/shards/batch=<id>/<split>-<k>.parquet   shards first written by v<N>
The golden set beside the versions is flywheel/evaluation/evalset.py's.

A version is immutable. v<N+1> lists every shard of v<N> (same paths, bytes untouched) plus
shards for the fleet batches it adds. A batch relabeled after it entered a version (human answers
that came late) is *revised*: v<N+1> swaps its shards for new ones written under v<N+1>, and v<N>
keeps the old. Each version records the labels each batch was built from (`sources`: the sha256
that the augment stage writes into the batch's Parquet footer), which is how a revision is seen. Shards become part of a version only when its manifest
is written, so a crash before that leaves v<N> the latest, whole and readable; the retry
rewrites the orphan shards of v<N+1> from scratch.

Immutability is checked, not assumed: a shard is compared with the sha256 its manifest recorded
when a new version reuses it and when the reader opens it (`check_shards`), so a shard rewritten
behind a manifest's back fails the step instead of training a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from flywheel import layout
from flywheel.data.schema import DATASET, dataset_schema
from flywheel.ingest import list_batches
from flywheel.store import Store

SPLITS = ("train", "val", "test")  # fixed order: the hash interval of each split
FORMAT = 1  # manifest format version
MiB = 1 << 20
SOURCE_KEY = b"flywheel.labels_sha256"  # Parquet footer metadata of a batch's augmented rows
log = logging.getLogger(__name__)
# (store root, shard path, sha256, size, mtime_ns) of the shards that matched their sha256 in this process
_verified: set[tuple] = set()


class ShardCorruptError(ValueError):
    """A shard's bytes no longer match the sha256 its version's manifest recorded."""


def split_for(clip_id: str, shares: Mapping[str, float]) -> str:
    """The split of a clip: sha256(clip_id) as a uniform number in [0, 1) against cumulative shares."""
    _check_shares(shares)
    u = int.from_bytes(hashlib.sha256(clip_id.encode()).digest()[:8], "big") / 2**64
    edge = 0.0
    for split in SPLITS:
        edge += shares[split]
        if u < edge:
            return split
    return SPLITS[-1]  # u within rounding of 1.0


def join_labels(frames: pa.Table, labels: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The labeled frames and their labels, row for row (joined by frame_id, in the frames' order)."""
    label_row = {fid: i for i, fid in enumerate(labels.column("frame_id").to_pylist())}
    if len(label_row) != labels.num_rows:
        raise ValueError("labels hold more than one row for some frame_id")
    fids = frames.column("frame_id").to_pylist()
    keep = [i for i, f in enumerate(fids) if f in label_row]
    return frames.take(pa.array(keep, pa.int64())), labels.take(pa.array([label_row[fids[i]] for i in keep], pa.int64()))


def to_dataset_rows(frames: pa.Table, labels: pa.Table, classes: Sequence[str],
                    shares: Mapping[str, float]) -> pa.Table:  # fmt: skip
    """Labeled frames as dataset rows (schema DATASET): the label joined by frame_id, split by clip."""
    f, lab = join_labels(frames, labels)
    label = lab.column("label").to_numpy(zero_copy_only=False)
    if len(label) and (label.min() < 0 or label.max() >= len(classes)):
        bad = int(label[(label < 0) | (label >= len(classes))][0])
        raise ValueError(f"label index {bad} outside the {len(classes)} classes {list(classes)}")
    splits = [split_for(c, shares) for c in f.column("clip_id").to_pylist()]
    columns = {n: f.column(n) for n in DATASET.names if n in f.column_names}
    columns.update(
        label=lab.column("label"),
        label_source=lab.column("label_source"),
        label_confidence=lab.column("label_confidence"),
        split=pa.array(splits, pa.string()),
        augmentation=pa.array([""] * f.num_rows, pa.string()),
    )
    return pa.table({n: columns[n] for n in DATASET.names}).cast(DATASET)


def latest_version(store: Store, name: str) -> int | None:
    """The highest N with a committed `datasets/<name>/v<N>/manifest.json`, or None."""
    prefix = layout.versions_prefix(name)
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)/manifest\.json$")
    versions = [int(m.group(1)) for o in store.list(prefix) if (m := pattern.match(o.key))]
    return max(versions, default=None)


def load_manifest(store: Store, name: str, version: int | None = None) -> dict:
    """The manifest of version `version` (None: the latest)."""
    if version is None:
        version = latest_version(store, name)
        if version is None:
            raise FileNotFoundError(f"dataset {name!r} has no version under {store.uri(layout.versions_prefix(name))}")
    return store.read_json(layout.manifest_key(name, version))


def append_version(
    store: Store,
    *,
    name: str,
    batches: Mapping[str, pa.Table],
    classes: Sequence[str],
    shard_mb: float = 64.0,
    row_group_rows: int = 256,
    created_at: str | None = None,
    sources: Mapping[str, str | None] | None = None,
) -> dict:
    """Write v<N+1> = v<N>'s shards + shards for the batches not yet included; return its manifest.

    `sources` names the labels each batch's rows were built from (`labels_source`). A batch v<N>
    holds is skipped, unless both versions know its source and it changed: then it is revised
    (its shards replaced in v<N+1>; v<N> untouched). With nothing new, no version is written and
    v<N>'s manifest is returned.
    """
    layout.check_name(name, "dataset name")
    if shard_mb <= 0 or row_group_rows < 1:
        raise ValueError(
            f"shard_mb must be > 0 and row_group_rows >= 1, got {shard_mb}, {row_group_rows}"
        )
    parent_version = latest_version(store, name)
    parent = load_manifest(store, name, parent_version) if parent_version is not None else None
    if parent is not None and list(parent["classes"]) != list(classes):
        raise ValueError(
            f"dataset {name!r} v{parent_version} has classes {parent['classes']}, got {list(classes)}: "
            "class indices would change meaning; use a new dataset name"
        )
    tasks = {_task_of(rows) for rows in batches.values()}
    if len(tasks) > 1:
        raise ValueError(f"dataset {name!r}: the batches mix classification and detection rows")
    task = tasks.pop() if tasks else (parent or {}).get("task", "classification")
    if parent is not None and parent.get("task", "classification") != task:
        raise ValueError(f"dataset {name!r} v{parent_version} holds {parent.get('task', 'classification')} rows, "
                         f"these batches are {task} rows: use a new dataset name")  # fmt: skip
    included = set(parent["batches"]) if parent else set()
    known = dict(parent.get("sources", {})) if parent else {}
    sources = {b: v for b, v in (sources or {}).items() if v is not None}
    revised = sorted(b for b in batches if b in included and b in known and b in sources and sources[b] != known[b])
    new = sorted(b for b in batches if b not in included)
    if not new and not revised:
        if parent is None:
            raise ValueError(f"dataset {name!r} has no version yet and no batches were given")
        return parent

    if parent is not None:  # v<N+1> must not inherit a shard rewritten since v<N> was committed
        check_shards(store, parent)
    version = (parent_version or 0) + 1
    shards = [sh for sh in parent["shards"] if sh["batch"] not in revised] if parent else []
    for batch_id in sorted(new + revised):
        rows = _checked_rows(batches[batch_id], batch_id, classes)
        shards += _write_batch_shards(
            store, rows, prefix=layout.shards_prefix(name, version, batch_id),
            batch_id=batch_id, classes=classes, shard_bytes=int(shard_mb * MiB),
            row_group_rows=row_group_rows,
        )  # fmt: skip
    manifest = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "parent": parent_version,
        "created_at": created_at or datetime.now(UTC).isoformat(timespec="seconds"),
        "task": task,
        "schema": [{"name": f.name, "type": str(f.type)} for f in dataset_schema(task)],
        "classes": list(classes),
        "row_group_rows": row_group_rows,
        "shards": shards,
        "counts": _totals(shards),
        "batches": sorted(included | set(new)),
        "new_batches": new,
        "revised_batches": revised,
        "new_bytes": sum(s["bytes"] for s in shards if s["batch"] in new or s["batch"] in revised),
        "sources": {**known, **{b: sources[b] for b in new + revised if b in sources}},
    }
    store.write_json(layout.manifest_key(name, version), manifest)  # atomic, last: the version appears whole
    return manifest


def check_shards(store: Store, manifest: dict, shards: Sequence[dict] | None = None) -> None:
    """Raise ShardCorruptError, naming the shard, the dataset and the version, if one of `shards`
    (default: all of the manifest's) is missing or no longer holds the bytes its manifest recorded.

    The size is compared first (one stat), then the sha256, streamed in 8 MiB chunks. A shard that
    passed is not hashed again in this process while its size and mtime stay the same, so an epoch
    loop or a second reader costs one stat per shard, not a read.
    """
    fs, _ = store.arrow_fs()
    hashed, nbytes, t0 = 0, 0, time.perf_counter()
    for s in manifest["shards"] if shards is None else shards:
        where = f"dataset {manifest['name']!r} v{manifest['version']}: shard {s['path']}"
        info = fs.get_file_info(store.arrow_path(s["path"]))
        if info.type != pafs.FileType.File:
            raise ShardCorruptError(f"{where} is missing: no file at {store.uri(s['path'])}")
        if info.size != s["bytes"]:
            raise ShardCorruptError(
                f"{where} has {info.size} bytes, its manifest recorded {s['bytes']}: "
                "it changed after the version was committed"
            )
        seen = (store.root, s["path"], s["sha256"], info.size, info.mtime_ns)
        if seen in _verified:
            continue
        sha = _sha256(store, s["path"])
        hashed, nbytes = hashed + 1, nbytes + info.size
        if sha != s["sha256"]:
            raise ShardCorruptError(
                f"{where} has sha256 {sha}, its manifest recorded {s['sha256']}: "
                "it changed after the version was committed"
            )
        _verified.add(seen)
    if hashed:
        log.info("verified %d shard(s), %.1f MiB, of dataset %r v%s in %.2fs", hashed, nbytes / MiB,
                 manifest["name"], manifest["version"], time.perf_counter() - t0)  # fmt: skip


def verify_shards(store: Store, manifest: dict) -> list[str]:
    """Paths of the manifest's shards whose bytes no longer match their sha256 (empty: all good)."""
    return [s["path"] for s in manifest["shards"] if _sha256(store, s["path"]) != s["sha256"]]


def manifest_sha256(manifest: dict) -> str:
    """A stable hash of a manifest: what a model was trained on, in MLflow and the deploy manifest."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def labels_source(store: Store, batch_id: str) -> str | None:
    """The sha256 of the labels a batch's augmented rows were built from (None: written before it was kept)."""
    meta = store.parquet_file(layout.augmented_key(batch_id)).schema_arrow.metadata or {}
    return meta[SOURCE_KEY].decode() if SOURCE_KEY in meta else None


def waiting_batches(store: Store, name: str) -> tuple[int, list[str]]:
    """(labeled original frames, batch ids), oldest first, of batches whose augmented rows are written
    and that the latest version of dataset `name` does not include yet, or includes with labels
    that changed since (late human answers: the batch is revised in the next version)."""
    manifest = load_manifest(store, name) if latest_version(store, name) else {"batches": [], "sources": {}}
    included, known = set(manifest["batches"]), manifest.get("sources", {})
    ready = [m["batch_id"] for m in list_batches(store) if store.exists(layout.augmented_key(m["batch_id"]))]
    waiting = [b for b in ready if b not in included
               or (b in known and labels_source(store, b) not in (None, known[b]))]  # fmt: skip
    frames = sum(store.parquet_file(layout.labels_key(b)).metadata.num_rows for b in waiting
                 if store.exists(layout.labels_key(b)))  # fmt: skip
    return frames, waiting


def shard_keys(manifest: dict, split: str | None = None) -> list[str]:
    return [s["path"] for s in manifest["shards"] if split is None or s["split"] == split]


def _check_shares(shares: Mapping[str, float]) -> None:
    if set(shares) != set(SPLITS):
        raise ValueError(f"split shares need exactly the keys {list(SPLITS)}, got {sorted(shares)}")
    if any(v < 0 for v in shares.values()) or abs(sum(shares.values()) - 1.0) > 1e-6:
        raise ValueError(f"split shares must be >= 0 and sum to 1, got {dict(shares)}")


def split_rows(manifest: dict, split: str) -> int:
    """Rows of one split (train, val, test) in a dataset version, offline copies included."""
    return sum(sum(s["row_groups"]) for s in manifest["shards"] if s["split"] == split)


def _task_of(rows: pa.Table) -> str:
    """detection for rows that carry box sets, else classification."""
    return "detection" if "boxes" in rows.column_names else "classification"


def _checked_rows(rows: pa.Table, batch_id: str, classes: Sequence[str]) -> pa.Table:
    """`rows` cast to their task's schema (DATASET, DETECTION_DATASET) and sorted by frame_id, or ValueError
    naming the batch and problem."""
    schema = dataset_schema(_task_of(rows))
    missing = set(schema.names) - set(rows.column_names)
    if missing:
        raise ValueError(f"batch {batch_id}: dataset rows lack columns {sorted(missing)}")
    rows = rows.select(schema.names).cast(schema)
    bad_split = set(rows.column("split").unique().to_pylist()) - set(SPLITS)
    if bad_split:
        raise ValueError(f"batch {batch_id}: unknown split(s) {sorted(map(str, bad_split))}")
    if "label" in schema.names:
        label, n_classes = rows.column("label"), len(classes)
        if rows.num_rows and (pc.min(label).as_py() < 0 or pc.max(label).as_py() >= n_classes):
            raise ValueError(f"batch {batch_id}: label indices outside [0, {n_classes})")
    else:
        names = set(pc.struct_field(pc.list_flatten(rows.column("boxes")), "label").unique().to_pylist())
        if names - set(classes):
            raise ValueError(f"batch {batch_id}: box classes {sorted(map(str, names - set(classes)))} are not "
                             f"among the classes {list(classes)}")  # fmt: skip
    pairs = set(
        zip(rows.column("clip_id").to_pylist(), rows.column("split").to_pylist(), strict=True)
    )
    clips = Counter(c for c, _ in pairs)
    split_clips = [c for c, n in clips.items() if n > 1]
    if split_clips:
        raise ValueError(
            f"batch {batch_id}: clip {split_clips[0]!r} has rows in more than one split"
        )
    return rows.sort_by("frame_id")


def _write_batch_shards(store: Store, rows: pa.Table, *, prefix: str, batch_id: str,
                        classes: Sequence[str], shard_bytes: int, row_group_rows: int) -> list[dict]:  # fmt: skip
    """One set of shards per split of one batch, rolling a new shard at `shard_bytes`."""
    fs, _ = store.arrow_fs()
    if isinstance(fs, pafs.LocalFileSystem):  # object stores have no folders to make
        fs.create_dir(store.arrow_path(prefix), recursive=True)
    out = []
    for split in SPLITS:
        part = rows.filter(pc.equal(rows.column("split"), split))
        start, k = 0, 0
        while start < part.num_rows:
            key = f"{prefix}/{split}-{k:05d}.parquet"
            start, row_groups = _write_shard(fs, store.arrow_path(key), part, start,
                                             shard_bytes=shard_bytes, row_group_rows=row_group_rows)  # fmt: skip
            written = part.slice(start - sum(row_groups), sum(row_groups))
            out.append(_shard_entry(store, key, split, batch_id, written, row_groups, classes))
            k += 1
    return out


def _write_shard(fs, path: str, rows: pa.Table, start: int, *, shard_bytes: int,
                 row_group_rows: int) -> tuple[int, list[int]]:  # fmt: skip
    """Write row groups from `start` until the file reaches `shard_bytes`; (next start, group sizes)."""
    not_image = [n for n in rows.schema.names if n != "image"]
    row_groups = []
    with fs.open_output_stream(path) as sink, pq.ParquetWriter(
        sink, rows.schema,
        compression={n: ("none" if n == "image" else "snappy") for n in rows.schema.names},
        use_dictionary=not_image,  # encoded images neither compress nor repeat
        write_statistics=not_image,  # min/max of JPEG bytes is useless and bloats the footer
    ) as writer:  # fmt: skip
        while start < rows.num_rows:
            group = rows.slice(start, row_group_rows)
            writer.write_table(group, row_group_size=row_group_rows)
            row_groups.append(group.num_rows)
            start += group.num_rows
            if sink.tell() >= shard_bytes:
                break
    return start, row_groups


def _shard_entry(store: Store, key: str, split: str, batch_id: str, rows: pa.Table,
                 row_groups: list[int], classes: Sequence[str]) -> dict:  # fmt: skip
    fs, _ = store.arrow_fs()
    if "label" in rows.column_names:
        per_class = {classes[c]: n for c, n in sorted(Counter(rows.column("label").to_pylist()).items())}
    else:  # detection: boxes per class
        per_class = dict(sorted(Counter(pc.struct_field(pc.list_flatten(rows.column("boxes")), "label").to_pylist()).items()))
    info, sha = fs.get_file_info(store.arrow_path(key)), _sha256(store, key)
    _verified.add((store.root, key, sha, info.size, info.mtime_ns))  # hashed just now
    return {
        "path": key,
        "split": split,
        "batch": batch_id,
        "rows": rows.num_rows,
        "row_groups": row_groups,
        "bytes": info.size,
        "sha256": sha,
        "counts": {
            "class": per_class,
            "trigger": dict(sorted(Counter(rows.column("trigger").to_pylist()).items())),
            "condition": dict(sorted(Counter(rows.column("condition").to_pylist()).items())),
            "augmented": int(pc.sum(pc.not_equal(rows.column("augmentation"), "")).as_py() or 0),
        },
    }


def _sha256(store: Store, key: str) -> str:
    fs, _ = store.arrow_fs()
    h = hashlib.sha256()
    with fs.open_input_stream(store.arrow_path(key)) as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def _totals(shards: list[dict]) -> dict[str, Any]:
    """Counts over all shards: rows per split, class, trigger, condition, split x class."""
    totals: dict[str, Counter] = {
        k: Counter() for k in ("split", "class", "trigger", "condition", "augmented")
    }
    split_class: dict[str, Counter] = {s: Counter() for s in SPLITS}
    for s in shards:
        totals["split"][s["split"]] += s["rows"]
        totals["augmented"][s["split"]] += s["counts"]["augmented"]
        for dim in ("class", "trigger", "condition"):
            totals[dim].update(s["counts"][dim])
        split_class[s["split"]].update(s["counts"]["class"])
    out: dict[str, Any] = {k: dict(sorted(v.items())) for k, v in totals.items()}
    out["rows"] = sum(s["rows"] for s in shards)
    out["split_class"] = {s: dict(sorted(c.items())) for s, c in split_class.items()}
    return out
