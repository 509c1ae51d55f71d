"""What a model is judged on: the golden set, the reserved test clips, the evaluation frames, and the fixed held-out set.

    datasets/<name>/golden/v<K>.json   golden test frames (frame ids): append-only, growing to its size
    datasets/<name>/fixed_set.json     the fixed held-out set (frame ids): made once, never changed

The test split of a batch is its clips' hash split plus reserved clips: while a slice (condition
x class, trigger) has fewer than `eval.per_slice_frames` human- or ground-truth-labeled test
frames, train clips of a new batch that hold such frames move to test (at most
`eval.max_reserved_share` of the batch's train clips), decided once when the batch is augmented,
so the evaluation set grows with the fleet, never shrinks, and a clip's split never changes.

Evaluation scores challenger and champion on the same frames (DESIGN.md §4): the test split of
the dataset version plus the golden set, without auto labels (they are the champion's own
guesses, so scoring on them would favour the champion by construction). That set grows harder
as reserved clips of rare slices join it, so it cannot tell a better model from a harder test:
both are also scored on the fixed held-out set, the labeled test frames of the first version with
at least `eval.fixed_set_min_frames` of them, frozen then.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel import layout
from flywheel.config import EvalSettings
from flywheel.data.dataset import latest_version, load_manifest, shard_keys
from flywheel.data.reader import load_arrays
from flywheel.ingest import list_batches
from flywheel.store import Store


def grow_golden(store: Store, name: str, manifest: dict, size: int, seed: int) -> dict:
    """The golden set after dataset version `manifest`: append-only, growing towards `size` frames.

    Every earlier golden frame stays (scores stay comparable across versions); while the set is
    short of `size`, human- or ground-truth-labeled originals of this version's test split join it
    (picked by `seed`), and a new `golden/v<K+1>.json` is written. Full, or nothing to add: the
    latest golden set comes back unchanged (None before the first one exists and nothing to add).
    """
    if size < 0:
        raise ValueError(f"golden size must be >= 0, got {size}")
    current = latest_golden_version(store, name)
    golden = load_golden(store, name, current) if current is not None else None
    have = list(golden["frame_ids"]) if golden else []
    candidates: list[str] = []
    if len(have) < size:
        taken = set(have)
        candidates = [f for f in labeled_test_frames(store, manifest) if f not in taken]
    room = min(size - len(have), len(candidates))
    if room <= 0:
        return golden
    rng = np.random.default_rng([seed, manifest["version"]])
    added = sorted(rng.choice(candidates, size=room, replace=False).tolist())
    golden = {
        "version": (current or 0) + 1,
        "dataset_version": manifest["version"],
        "size": len(have) + len(added),
        "seed": seed,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "frame_ids": have + added,
        "added": len(added),
    }
    store.write_json(layout.golden_key(name, golden["version"]), golden)
    return golden


def labeled_test_frames(store: Store, manifest: dict) -> list[str]:
    """Frame ids of the original (not augmented) test frames of a version that people or the clips'
    ground truth labeled, sorted: the frames a model may be judged on (auto labels are a model's guesses)."""
    keys = shard_keys(manifest, "test")
    if not keys:
        return []
    t = store.read_parquet(keys, columns=["frame_id", "augmentation", "label_source"])
    keep = pc.and_(pc.equal(t.column("augmentation"), ""), pc.not_equal(t.column("label_source"), "auto"))
    return sorted(t.filter(keep).column("frame_id").to_pylist())


def fixed_set(store: Store, name: str, manifest: dict, *, min_frames: int) -> dict | None:
    """The fixed held-out set of dataset `name`: the labeled test frames of its first version that has at
    least `min_frames` of them, frozen as frame ids in `fixed_set.json` when first asked for, then never
    changed (a clip's split never changes and versions only grow, so every later version holds them).

    The growing evaluation set gets harder as reserved clips of rare slices join it; scores on this
    one compare models of different turns. Versions up to `manifest` are looked at, oldest first;
    None while none of them has enough (then nothing is written).
    """
    if min_frames < 1:
        raise ValueError(f"min_frames must be >= 1, got {min_frames}")
    key = layout.fixed_set_key(name)
    if store.exists(key):
        return store.read_json(key)
    for version in range(1, manifest["version"] + 1):
        m = manifest if version == manifest["version"] else load_manifest(store, name, version)
        if m["counts"]["split"].get("test", 0) < min_frames:
            continue  # too few test rows of any label: no need to read its shards
        frame_ids = labeled_test_frames(store, m)
        if len(frame_ids) >= min_frames:
            record = {"dataset_version": version, "min_frames": min_frames, "frames": len(frame_ids),
                      "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "frame_ids": frame_ids}  # fmt: skip
            store.create(key, json.dumps(record, indent=2).encode())  # of two racing evaluations, one set wins
            return store.read_json(key)
    return None


def no_fixed_set(manifest: dict, min_frames: int) -> dict:
    """An evaluation's fixed-set record while there is no fixed set yet: no scores, and why."""
    return {"frames": None, "dataset_version": None, "challenger": None, "champion": None,
            "note": f"no fixed set yet (no dataset version up to v{manifest['version']} has {min_frames} "
                    "labeled test frames: eval.fixed_set_min_frames)"}  # fmt: skip


def latest_golden_version(store: Store, name: str) -> int | None:
    prefix = layout.golden_prefix(name)
    pattern = re.compile(rf"^{re.escape(prefix)}v(\d+)\.json$")
    return max((int(m.group(1)) for o in store.list(prefix) if (m := pattern.match(o.key))), default=None)


def load_golden(store: Store, name: str, version: int | None = None) -> dict:
    version = latest_golden_version(store, name) if version is None else version
    if version is None:
        raise FileNotFoundError(f"dataset {name!r} has no golden set yet")
    return store.read_json(layout.golden_key(name, version))


def evaluation_frames(store: Store, name: str, manifest: dict, *, image_size: int
                      ) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray]:  # fmt: skip
    """The test split plus the golden set, without auto labels: images uint8 (N, 3, S, S), labels (N,),
    slice metadata {column: N values}, golden mask (N,) bool."""
    images, labels, meta = load_arrays(store, manifest, split="test", image_size=image_size)
    golden = set(load_golden(store, name)["frame_ids"]) if latest_golden_version(store, name) else set()
    missing = sorted(golden - set(meta["frame_id"]))
    if missing:  # golden frames outside this version's test split (e.g. an older class list)
        gi, gl, gm = load_arrays(store, manifest, frame_ids=missing, image_size=image_size)
        images, labels = np.concatenate([images, gi]), np.concatenate([labels, gl])
        meta = {k: list(meta[k]) + list(gm[k]) for k in meta}
    keep = np.array([s != "auto" for s in meta["label_source"]], dtype=bool)
    images, labels = images[keep], labels[keep]
    meta = {k: [v for v, ok in zip(vals, keep, strict=True) if ok] for k, vals in meta.items()}
    mask = np.array([f in golden for f in meta["frame_id"]], dtype=bool)
    return images, labels, meta, mask


SLICE_COLUMNS = ["clip_id", "condition", "label", "trigger", "label_source", "augmentation", "split"]


def _slices(condition: str, label: int | None, trigger: str) -> tuple[str, str]:
    """A frame's slices for reserving test clips; detection rows (no class per frame) by condition alone."""
    return f"condition={condition}" + ("" if label is None else f",class={label}"), f"trigger={trigger}"


def _columns(names: list[str]) -> list[str]:
    """SLICE_COLUMNS a table has (detection rows carry box sets, no `label`)."""
    return [c for c in SLICE_COLUMNS if c in names]


def test_counts(store: Store, name: str, batch_id: str) -> Counter:
    """Labeled original test frames per slice before `batch_id`: in the latest version of dataset
    `name` and in older batches augmented but not in it yet (so a retried batch counts the same)."""
    tables = []
    included: set[str] = set()
    if latest_version(store, name):
        manifest = load_manifest(store, name)
        included = set(manifest["batches"])
        if keys := shard_keys(manifest, "test"):
            tables.append(store.read_parquet(keys, columns=_columns([f["name"] for f in manifest["schema"]])))
    for m in list_batches(store):
        b = m["batch_id"]
        if b == batch_id:
            break  # batches are listed oldest first: only those before this one count
        if b not in included and store.exists(layout.augmented_key(b)):
            names = store.parquet_file(layout.augmented_key(b)).schema_arrow.names
            tables.append(store.read_parquet(layout.augmented_key(b), columns=_columns(names)))
    counts: Counter = Counter()
    for t in tables:
        for r in t.to_pylist():
            if r["split"] == "test" and r["augmentation"] == "" and r["label_source"] != "auto":
                counts.update(_slices(r["condition"], r.get("label"), r["trigger"]))
    return counts


def reserve_test_clips(rows: pa.Table, counts: Counter, settings: EvalSettings) -> tuple[pa.Table, dict]:
    """Move whole train clips of a batch's dataset rows to test while a slice they hold is short of
    `per_slice_frames` (given `counts` before this batch); returns the rows and what was reserved."""
    clip_ids = rows.column("clip_id").to_pylist()
    split = rows.column("split").to_pylist()
    train_clips = sorted({c for c, s in zip(clip_ids, split, strict=True) if s == "train"})
    budget = int(settings.max_reserved_share * len(train_clips))
    if not settings.per_slice_frames or not budget:
        return rows, {"clips": 0, "frames": 0}
    by_clip: dict[str, list[tuple[str, str]]] = {}
    for r in rows.select(_columns(rows.column_names)).to_pylist():
        if r["split"] == "train" and r["label_source"] != "auto" and r["augmentation"] == "":
            by_clip.setdefault(r["clip_id"], []).append(_slices(r["condition"], r.get("label"), r["trigger"]))
    have, moved = Counter(counts), set()
    # rarest slices first: a clip is reserved for the shortest slice it can fill
    for clip in sorted(by_clip, key=lambda c: (min(have[s] for f in by_clip[c] for s in f), c)):
        if len(moved) >= budget:
            break
        if any(have[s] < settings.per_slice_frames for f in by_clip[clip] for s in f):
            moved.add(clip)
            for f in by_clip[clip]:
                have.update(f)
    if not moved:
        return rows, {"clips": 0, "frames": 0}
    new_split = ["test" if c in moved else s for c, s in zip(clip_ids, split, strict=True)]
    i = rows.column_names.index("split")
    out = rows.set_column(i, rows.field(i), pa.array(new_split, pa.string()))
    return out, {"clips": len(moved), "frames": sum(c in moved for c in clip_ids)}
