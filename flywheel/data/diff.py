"""What changed between two versions of a dataset: batches, clips and frames added, counts per
split, class, condition and trigger, and labels that changed on frames both versions hold.

Counts come from the manifests; clips and labels from the shards' `clip_id`, `frame_id`, `label`
and `augmentation` columns only (no images are read). Offline copies (`augmentation` set) count
as rows, not as frames or clips.
"""

from __future__ import annotations

import pyarrow.compute as pc

from flywheel import layout
from flywheel.data import dataset
from flywheel.store import Store

DIMENSIONS = ("split", "class", "condition", "trigger")
MAX_LISTED = 200  # changed labels listed in full; the count is always exact


def diff_versions(store: Store, name: str, a: int, b: int) -> dict:
    """Dataset `name` from version `a` to version `b` (either order; `a` is the "before")."""
    if a == b:
        raise ValueError(f"dataset {name}: compare two different versions, got v{a} twice")
    for v in (a, b):
        if not store.exists(layout.manifest_key(name, v)):
            latest = dataset.latest_version(store, name)
            raise ValueError(f"dataset {name} has no version v{v} "
                             f"({f'the latest is v{latest}' if latest else 'no versions yet'})")  # fmt: skip
    ma, mb = (dataset.load_manifest(store, name, v) for v in (a, b))
    if ma["classes"] != mb["classes"]:
        raise ValueError(f"dataset {name} v{a} and v{b} have different class lists: their labels do not compare")
    frames_a, frames_b = _frames(store, ma), _frames(store, mb)
    clips_a = {c for c, _ in frames_a.values()}
    clips_b = {c for c, _ in frames_b.values()}
    both = frames_a.keys() & frames_b.keys()
    changed = sorted(
        ({"frame_id": f, "before": frames_a[f][1], "after": frames_b[f][1]} for f in both if frames_a[f][1] != frames_b[f][1]),
        key=lambda r: r["frame_id"],
    )  # fmt: skip
    counts = {
        dim: {
            k: {"before": ma["counts"][dim].get(k, 0), "after": mb["counts"][dim].get(k, 0),
                "delta": mb["counts"][dim].get(k, 0) - ma["counts"][dim].get(k, 0)}
            for k in sorted(set(ma["counts"][dim]) | set(mb["counts"][dim]))
        }
        for dim in DIMENSIONS
    }  # fmt: skip
    added = [x for x in mb["batches"] if x not in ma["batches"]]
    return {
        "dataset": name, "before": a, "after": b,
        "rows": {"before": ma["counts"]["rows"], "after": mb["counts"]["rows"]},
        "batches_added": [_batch(store, mb, x) for x in added],
        "batches_removed": [x for x in ma["batches"] if x not in mb["batches"]],
        "clips_added": len(clips_b - clips_a), "clips_removed": len(clips_a - clips_b),
        "frames_added": len(frames_b.keys() - frames_a.keys()),
        "frames_removed": len(frames_a.keys() - frames_b.keys()),
        "labels_changed": len(changed), "changed": changed[:MAX_LISTED],
        "counts": counts,
    }  # fmt: skip


def markdown(diff: dict) -> str:
    """The diff as Markdown: a summary line, counts per dimension, added batches, changed labels."""
    lines = [
        f"**{diff['dataset']} v{diff['before']} → v{diff['after']}**: "
        f"{diff['rows']['before']:,} → {diff['rows']['after']:,} rows; "
        f"+{diff['clips_added']:,} clips, +{diff['frames_added']:,} frames "
        f"(−{diff['clips_removed']:,} clips, −{diff['frames_removed']:,} frames); "
        f"{diff['labels_changed']:,} label(s) changed",
        "",
        "| dimension | value | before | after | Δ |",
        "| --- | --- | --- | --- | --- |",
    ]
    for dim, values in diff["counts"].items():
        for k, c in values.items():
            lines.append(f"| {dim} | {k} | {c['before']:,} | {c['after']:,} | {c['delta']:+,} |")
    if diff["batches_added"]:
        lines += ["", "| batch added | rows | frames | clips |", "| --- | --- | --- | --- |"]
        lines += [f"| {x['batch']} | {x['rows']:,} | {x['frames']:,} | {x['clips']:,} |" for x in diff["batches_added"]]
    if diff["changed"]:
        lines += ["", "| frame | label before | label after |", "| --- | --- | --- |"]
        lines += [f"| {r['frame_id']} | {r['before']} | {r['after']} |" for r in diff["changed"]]
    return "\n".join(lines)


def _frames(store: Store, manifest: dict) -> dict[str, tuple[str, str]]:
    """frame_id -> (clip_id, label) of a version's original frames (offline copies left out); the label as
    shown: the class name, or for detection rows the box set (`_box_set`)."""
    keys = dataset.shard_keys(manifest)
    if not keys:
        return {}
    column = "boxes" if manifest.get("task") == "detection" else "label"
    t = store.read_parquet(keys, columns=["frame_id", "clip_id", column, "augmentation"])
    t = t.filter(pc.equal(t.column("augmentation"), ""))
    ids, clips, labels = (t.column(c).to_pylist() for c in ("frame_id", "clip_id", column))
    shown = [_box_set(y) for y in labels] if column == "boxes" else [manifest["classes"][y] for y in labels]
    return {f: (c, y) for f, c, y in zip(ids, clips, shown, strict=True)}


def _box_set(boxes: list[dict] | None) -> str:
    """A frame's boxes as one comparable line: `class x,y,w,h` each (whole pixels), sorted; "no objects" for none."""
    if not boxes:
        return "no objects"
    return "; ".join(sorted(f"{b['label']} {b['x']:.0f},{b['y']:.0f},{b['w']:.0f},{b['h']:.0f}" for b in boxes))


def _batch(store: Store, manifest: dict, batch_id: str) -> dict:
    """An added batch's rows (offline copies included), original frames and clips."""
    keys = [s["path"] for s in manifest["shards"] if s["batch"] == batch_id]
    t = store.read_parquet(keys, columns=["clip_id", "augmentation"])
    originals = t.filter(pc.equal(t.column("augmentation"), ""))
    return {"batch": batch_id, "rows": t.num_rows, "frames": originals.num_rows,
            "clips": len(set(originals.column("clip_id").to_pylist()))}  # fmt: skip
