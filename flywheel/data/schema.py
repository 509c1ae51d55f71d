"""Arrow schemas of the Parquet tables other stages read: frames, labels, dataset rows."""

from __future__ import annotations

import pyarrow as pa

# One frame's objects (the detection task): class name and box in pixels of the frame, x/y its top-left corner.
BOXES = pa.list_(pa.struct([("label", pa.string()), ("x", pa.float32()), ("y", pa.float32()), ("w", pa.float32()),
                            ("h", pa.float32()), ("track_id", pa.string())]))  # fmt: skip

# frames/batch=<id>/*.parquet: one row per camera frame of an accepted clip.
FRAMES = pa.schema([
    ("frame_id", pa.string()),  # <clip_id>/<camera>/<index>
    ("clip_id", pa.string()),
    ("vehicle_id", pa.string()),
    ("trigger", pa.string()),
    ("recorded_at", pa.string()),  # ISO-8601
    ("condition", pa.string()),  # metadata slice from the clip record ("" if absent)
    ("camera", pa.string()),
    ("timestamp_ns", pa.int64()),
    ("image", pa.binary()),  # encoded as uploaded
    ("format", pa.string()),  # jpeg | png | webp
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("ground_truth", pa.string()),  # class name from /ground_truth, null if none
    ("batch_id", pa.string()),
    ("clip_key", pa.string()),  # landing key the clip came from
    ("boxes", BOXES),  # objects from /ground_truth/boxes/<camera>, null where the frame has no box message
])  # fmt: skip

# labels/batch=<id>/*.parquet: the chosen label of each labeled frame.
LABELS = pa.schema([
    ("frame_id", pa.string()),
    ("label", pa.int32()),  # class index
    ("label_source", pa.string()),  # human | ground_truth | auto
    ("label_confidence", pa.float32()),
])  # fmt: skip

# datasets/<name>/v<N>/shards/*.parquet rows (DESIGN.md §3), plus the condition slice.
DATASET = pa.schema([
    ("frame_id", pa.string()),
    ("clip_id", pa.string()),
    ("vehicle_id", pa.string()),
    ("trigger", pa.string()),
    ("condition", pa.string()),
    ("camera", pa.string()),
    ("timestamp_ns", pa.int64()),
    ("image", pa.binary()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("label", pa.int32()),
    ("label_source", pa.string()),
    ("label_confidence", pa.float32()),
    ("split", pa.string()),  # train | val | test
    ("augmentation", pa.string()),  # "" for originals, else the pipeline id + seed
])  # fmt: skip

# The detection task (`task: detection`): a frame's label is its set of boxes (possibly empty: nothing there).
DETECTION_LABELS = pa.schema([
    ("frame_id", pa.string()),
    ("boxes", BOXES),  # in pixels of the frame as stored; track_id null
    ("label_source", pa.string()),  # human | ground_truth | auto
    ("label_confidence", pa.float32()),  # auto: the lowest score of the boxes kept; else 1
])  # fmt: skip

# Dataset rows of the detection task: DATASET's columns with the box set in place of the class index.
DETECTION_DATASET = pa.schema([f for f in DATASET if f.name != "label"] + [pa.field("boxes", BOXES)])


def dataset_schema(task: str) -> pa.Schema:
    """The dataset rows' schema of a task: DATASET (classification) or DETECTION_DATASET."""
    if task not in ("classification", "detection"):
        raise ValueError(f"unknown task {task!r}: classification or detection")
    return DETECTION_DATASET if task == "detection" else DATASET
