"""What a model is judged on: the frozen golden set and the evaluation frames of a dataset version.

    datasets/<name>/golden/v<K>.json   golden test frames (frame ids), drawn once, kept for every version

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


def freeze_golden(store: Store, name: str, manifest: dict, size: int, seed: int, *,
                  refreeze: bool = False) -> dict:  # fmt: skip
    """The frozen golden set: the latest `golden/v<K>.json`, or a new one drawn from the test split.

    Drawn once (human- or ground-truth-labeled originals of the test split, `size` frames by
    `seed`) and then kept for every later dataset version, so scores stay comparable;
    `refreeze=True` draws v<K+1>.
    """
    if size < 0:
        raise ValueError(f"golden size must be >= 0, got {size}")
    current = latest_golden_version(store, name)
    if current is not None and not refreeze:
        return load_golden(store, name, current)
    keys = shard_keys(manifest, "test")
    candidates: list[str] = []
    if keys:
        t = store.read_parquet(keys, columns=["frame_id", "augmentation", "label_source"])
        originals = pc.equal(t.column("augmentation"), "")
        by_people = pc.not_equal(t.column("label_source"), "auto")  # auto labels are a model's guesses
        candidates = sorted(t.filter(pc.and_(originals, by_people)).column("frame_id").to_pylist())
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(candidates, size=min(size, len(candidates)), replace=False).tolist()) if candidates else []
    golden = {
        "version": (current or 0) + 1,
        "dataset_version": manifest["version"],
        "size": len(picked),
        "seed": seed,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "frame_ids": picked,
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
