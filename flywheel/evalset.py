"""What a model is judged on: the golden set and the evaluation frames of a dataset version.

    datasets/<name>/golden/v<K>.json   golden test frames (frame ids): append-only, growing to its size

Evaluation scores challenger and champion on the same frames (DESIGN.md §4): the test split of
the dataset version plus the golden set, without auto labels (they are the champion's own
guesses, so scoring on them would favour the champion by construction).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import numpy as np
import pyarrow.compute as pc

from flywheel import layout
from flywheel.dataset import shard_keys
from flywheel.reader import load_arrays
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
    keys = shard_keys(manifest, "test")
    candidates: list[str] = []
    if keys and len(have) < size:
        t = store.read_parquet(keys, columns=["frame_id", "augmentation", "label_source"])
        originals = pc.equal(t.column("augmentation"), "")
        by_people = pc.not_equal(t.column("label_source"), "auto")  # auto labels are a model's guesses
        taken = set(have)
        candidates = sorted(f for f in t.filter(pc.and_(originals, by_people)).column("frame_id").to_pylist()
                            if f not in taken)  # fmt: skip
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
