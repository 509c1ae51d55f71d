"""The detection task's data: box sets as labels, dataset rows with boxes, offline augmented copies, and
reading a version's frames back as model input with their boxes.

A box set is a frame's list of objects, each `{"label", "x", "y", "w", "h", "track_id"}` in pixels of the
frame as stored (schema.BOXES); an empty list is a label too ("nothing here"). The model sees boxes as
(class index, x, y, w, h) in pixels of its square input (`to_input`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import albumentations as A
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.data import dataset
from flywheel.data.augment import JPEG_QUALITY, pipeline_id
from flywheel.data.schema import DETECTION_DATASET, DETECTION_LABELS
from flywheel.detection.augment import augment
from flywheel.detection.train import to_input
from flywheel.model_input import decode_images
from flywheel.store import Store

META = ("frame_id", "clip_id", "condition", "camera", "trigger", "label_source", "augmentation", "split")


def as_tuples(boxes: Sequence[Mapping] | None, classes: Sequence[str]) -> list[tuple]:
    """A stored box set as [(class index, x, y, w, h)] in the frame's pixels; a class not in `classes` raises."""
    index = {c: k for k, c in enumerate(classes)}
    out = []
    for b in boxes or []:
        if b["label"] not in index:
            raise ValueError(f"box class {b['label']!r} is not one of the classes {list(classes)}")
        out.append((index[b["label"]], float(b["x"]), float(b["y"]), float(b["w"]), float(b["h"])))
    return out


def as_stored(boxes: Sequence[tuple], classes: Sequence[str]) -> list[dict]:
    """[(class index, x, y, w, h)] (or with a score after the class) as stored box dicts, track_id null."""
    return [{"label": classes[int(b[0])], "x": float(b[-4]), "y": float(b[-3]), "w": float(b[-2]), "h": float(b[-1]),
             "track_id": None} for b in boxes]  # fmt: skip


def labels_table(frame_ids: Sequence[str], boxes: Sequence[list[dict]], sources: Sequence[str],
                 confidence: Sequence[float]) -> pa.Table:  # fmt: skip
    return pa.table({"frame_id": pa.array(list(frame_ids), pa.string()),
                     "boxes": pa.array(list(boxes), DETECTION_LABELS.field("boxes").type),
                     "label_source": pa.array(list(sources), pa.string()),
                     "label_confidence": pa.array(list(confidence), pa.float32())}, schema=DETECTION_LABELS)  # fmt: skip


def to_rows(frames: pa.Table, labels: pa.Table, shares: Mapping[str, float]) -> pa.Table:
    """Labeled frames as detection dataset rows (DETECTION_DATASET): the box set joined by frame_id, split by clip."""
    f, lab = dataset.join_labels(frames, labels)
    columns = {n: f.column(n) for n in DETECTION_DATASET.names if n in f.column_names}
    columns.update(
        boxes=lab.column("boxes"), label_source=lab.column("label_source"), label_confidence=lab.column("label_confidence"),
        split=pa.array([dataset.split_for(c, shares) for c in f.column("clip_id").to_pylist()], pa.string()),
        augmentation=pa.array([""] * f.num_rows, pa.string()),
    )  # fmt: skip
    return pa.table({n: columns[n] for n in DETECTION_DATASET.names}).cast(DETECTION_DATASET)


def box_counts(rows: pa.Table) -> dict[str, int]:
    """Boxes per class in rows (or labels) with a `boxes` column."""
    return dict(sorted(Counter(pc.struct_field(pc.list_flatten(rows.column("boxes")), "label").to_pylist()).items()))


def rare_copies(rows: pa.Table, classes: Sequence[str], *, target_share: float, max_copies: int, seed: int,
                pipeline: A.Compose) -> pa.Table:  # fmt: skip
    """Augmented copies of train originals that hold a box of a rare class, boxes moved with the pixels.

    A class is rare when its share of the train boxes is below `target_share` / (classes seen); each frame
    holding one gets up to `max_copies` copies (fewer as its rarest class nears the share), copy k of a frame
    drawn with the seed (seed, frame_id, k), so the output is the same for the same input.
    """
    train = rows.filter(pc.and_(pc.equal(rows.column("split"), "train"), pc.equal(rows.column("augmentation"), "")))
    counts = box_counts(train)
    if not counts or max_copies < 1:
        return DETECTION_DATASET.empty_table()
    fair = target_share * sum(counts.values()) / len(counts)
    records = train.to_pylist()
    take = []
    for r in sorted(records, key=lambda r: r["frame_id"]):
        have = [counts[b["label"]] for b in r["boxes"] or []]
        if have and min(have) < fair:
            take += [(r, k) for k in range(min(max_copies, int(np.ceil(fair / min(have))) - 1))]
    out = []
    tag = f"{pipeline_id(pipeline)}@{seed}"
    for r, k in take:
        bgr = cv2.imdecode(np.frombuffer(r["image"], np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{r['frame_id']}: image bytes cannot be decoded")
        chw = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)
        pipeline.set_random_seed(_copy_seed(seed, r["frame_id"], k))
        image, moved = augment(pipeline, chw, as_tuples(r["boxes"], classes))
        ok, enc = cv2.imencode(".jpg", cv2.cvtColor(image.transpose(1, 2, 0), cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])  # fmt: skip
        if not ok:
            raise ValueError(f"{r['frame_id']}: augmented image cannot be encoded")
        out.append({**r, "frame_id": f"{r['frame_id']}#aug{k}", "image": enc.tobytes(), "height": image.shape[1],
                    "width": image.shape[2], "boxes": as_stored(moved, classes), "augmentation": f"{tag}:{k}"})  # fmt: skip
    return pa.Table.from_pylist(out, schema=DETECTION_DATASET) if out else DETECTION_DATASET.empty_table()


def _copy_seed(seed: int, frame_id: str, k: int) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}/{frame_id}/{k}".encode()).digest()[:4], "little")


def load_frames(store: Store, manifest: dict, classes: Sequence[str], *, image_size: int, split: str | None = None,
                frame_ids: Sequence[str] | None = None, originals: bool = False,
                no_auto: bool = False) -> tuple[np.ndarray, list[list[tuple]], dict[str, list]]:  # fmt: skip
    """A version's frames as model input (N, 3, S, S) uint8, their boxes [(class, x, y, w, h)] in input pixels,
    and META columns; a `split` (or every split), or `frame_ids` (in that order: one raises if missing);
    `originals`: no offline copies; `no_auto`: no auto-labeled frames (what a model is judged on)."""
    keys = dataset.shard_keys(manifest, split) if frame_ids is None else dataset.shard_keys(manifest)
    if not keys:
        return np.empty((0, 3, image_size, image_size), np.uint8), [], {m: [] for m in META}
    t = store.read_parquet(keys, columns=[*META, "image", "height", "width", "boxes"])
    if frame_ids is not None:
        at = {f: i for i, f in enumerate(t.column("frame_id").to_pylist())}
        missing = [f for f in frame_ids if f not in at]
        if missing:
            raise ValueError(f"dataset {manifest['name']} v{manifest['version']} lacks frames {missing[:5]}")
        t = t.take(pa.array([at[f] for f in frame_ids], pa.int64()))
    if originals:
        t = t.filter(pc.equal(t.column("augmentation"), ""))
    if no_auto:
        t = t.filter(pc.not_equal(t.column("label_source"), "auto"))
    heights, widths = t.column("height").to_pylist(), t.column("width").to_pylist()
    images = decode_images(t.column("image").to_pylist(), image_size, frame_ids=t.column("frame_id").to_pylist(),
                           heights=heights, widths=widths)  # fmt: skip
    boxes = [to_input(as_tuples(b, classes), w, h, image_size)
             for b, h, w in zip(t.column("boxes").to_pylist(), heights, widths, strict=True)]  # fmt: skip
    return images, boxes, {m: t.column(m).to_pylist() for m in META}
