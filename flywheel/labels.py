"""Labels: pick one label per frame from human exports, clip ground truth and an auto-labeler.

Precedence is human > ground_truth > auto: a person who looked at the frame in Label Studio
overrides the annotation that came with the clip, and both override the model. Frames that no
source labels are left out (and counted), so they can be queued for a human.

Label Studio's JSON export is a list of tasks:
    [{"id": 7, "data": {"frame_id": "c1/front/3", "image": "..."},
      "annotations": [{"result": [{"type": "choices", "from_name": "label", "to_name": "image",
                                   "value": {"choices": ["vehicle"]}}],
                       "was_cancelled": false, "created_at": "...", "updated_at": "..."}]}]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from flywheel.schema import LABELS
from flywheel.store import Store

# (images: encoded bytes, frame_ids) -> (class_idx (N,) int, confidence (N,) float in [0, 1])
AutoLabeler = Callable[[list[bytes], list[str]], tuple[np.ndarray, np.ndarray]]

AUTO_CHUNK = 256  # frames per auto-labeler call: bounds memory, keeps batches model-sized


def load_label_studio_exports(store: Store, prefix: str = "labeling/done/") -> list[dict]:
    """Every `*.json` export under `prefix`, as `{"source": key, "tasks": [...]}`, sorted by key."""
    exports = []
    for obj in store.list(prefix):
        if not obj.key.endswith(".json"):
            continue
        tasks = store.read_json(obj.key)  # raises ValueError naming the file if not JSON
        if isinstance(tasks, dict) and "data" in tasks:
            tasks = [tasks]  # a single task exported on its own
        if not isinstance(tasks, list):
            raise ValueError(
                f"{store.uri(obj.key)}: a Label Studio JSON export is a list of tasks, "
                f"got {type(tasks).__name__}"
            )
        exports.append({"source": obj.key, "tasks": tasks})
    return exports


def human_labels(exports: Sequence[dict | list], classes: Sequence[str]) -> dict[str, int]:
    """frame_id -> class index from parsed exports; the latest annotation wins (ties: later export)."""
    index = {name: i for i, name in enumerate(classes)}
    chosen: dict[str, tuple[str, int]] = {}  # frame_id -> (annotation time, class index)
    for n, export in enumerate(exports):
        source, tasks = _export_tasks(export, n)
        for t, task in enumerate(tasks):
            where = f"{source} task {task.get('id', t) if isinstance(task, dict) else t}"
            frame_id, name, when = _task_label(task, where)
            if name is None:
                continue
            if name not in index:
                raise ValueError(f"{where}: unknown class {name!r}; known: {list(classes)}")
            if frame_id not in chosen or when >= chosen[frame_id][0]:
                chosen[frame_id] = (when, index[name])
    return {fid: c for fid, (_, c) in chosen.items()}


def build_labels(
    frames: pa.Table,
    *,
    classes: Sequence[str],
    human_exports: Sequence[dict | list] = (),
    auto_labeler: AutoLabeler | None = None,
    auto_threshold: float = 0.9,
) -> tuple[pa.Table, dict[str, Any]]:
    """One label per frame (schema LABELS) and stats: counts per source and unlabeled frames."""
    if not 0.0 <= auto_threshold <= 1.0:
        raise ValueError(f"auto_threshold must be in [0, 1], got {auto_threshold}")
    frame_ids = frames.column("frame_id").to_pylist()
    n = len(frame_ids)
    label = np.full(n, -1, dtype=np.int32)
    source = np.full(n, "", dtype=object)
    confidence = np.zeros(n, dtype=np.float32)

    truth = _ground_truth(frames, classes)
    has = truth >= 0
    label[has], source[has], confidence[has] = truth[has], "ground_truth", 1.0

    humans = human_labels(human_exports, classes)
    row_of = {fid: i for i, fid in enumerate(frame_ids)}
    for fid, c in humans.items():
        if fid in row_of:
            i = row_of[fid]
            label[i], source[i], confidence[i] = c, "human", 1.0

    auto_rejected = 0
    if auto_labeler is not None:
        todo = np.flatnonzero(label < 0)
        for start in range(0, len(todo), AUTO_CHUNK):
            rows = todo[start : start + AUTO_CHUNK]
            cls, conf = _run_auto(auto_labeler, frames, frame_ids, rows, len(classes))
            keep = conf >= auto_threshold
            auto_rejected += int((~keep).sum())
            label[rows[keep]], source[rows[keep]] = cls[keep], "auto"
            confidence[rows[keep]] = conf[keep]

    kept = np.flatnonzero(label >= 0)
    table = pa.table(
        {
            "frame_id": pa.array([frame_ids[i] for i in kept], pa.string()),
            "label": pa.array(label[kept], pa.int32()),
            "label_source": pa.array(source[kept].tolist(), pa.string()),
            "label_confidence": pa.array(confidence[kept], pa.float32()),
        },
        schema=LABELS,
    )
    sources = source[kept].tolist()
    stats = {
        "frames": n,
        "labeled": len(kept),
        "unlabeled": n - len(kept),
        "human": sources.count("human"),
        "ground_truth": sources.count("ground_truth"),
        "auto": sources.count("auto"),
        "auto_below_threshold": auto_rejected,
        "human_labels_for_other_frames": sum(fid not in row_of for fid in humans),
        "per_class": {c: int((label[kept] == i).sum()) for i, c in enumerate(classes)},
    }
    return table, stats


def unlabeled_frame_ids(frames: pa.Table, labels: pa.Table) -> list[str]:
    """Frames of `frames` that have no row in `labels` (candidates for the labeling queue)."""
    done = set(labels.column("frame_id").to_pylist())
    return [f for f in frames.column("frame_id").to_pylist() if f not in done]


def _export_tasks(export: dict | list, n: int) -> tuple[str, list]:
    if isinstance(export, list):
        return f"export #{n}", export
    if isinstance(export, dict) and "tasks" in export:
        return str(export.get("source", f"export #{n}")), list(export["tasks"])
    if isinstance(export, dict) and "data" in export:
        return f"export #{n}", [export]
    raise ValueError(
        f"export #{n}: expected a list of Label Studio tasks, got {type(export).__name__}"
    )


def _task_label(task: Any, where: str) -> tuple[str, str | None, str]:
    """(frame_id, class name or None, time) from the task's latest non-cancelled annotation."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise ValueError(f"{where}: a task needs a 'data' object")
    frame_id = task["data"].get("frame_id")
    if not isinstance(frame_id, str) or not frame_id:
        raise ValueError(f"{where}: task data has no 'frame_id'")
    best: tuple[str, int, str] | None = None  # (time, order, class name)
    for k, ann in enumerate(task.get("annotations") or []):
        if not isinstance(ann, dict):
            raise ValueError(f"{where}: annotation {k} is not an object")
        if ann.get("was_cancelled"):
            continue
        name = _choice(ann.get("result") or [], f"{where} annotation {ann.get('id', k)}")
        if name is None:
            continue  # an empty submission carries no label
        when = str(ann.get("updated_at") or ann.get("created_at") or "")
        if best is None or (when, k) >= best[:2]:
            best = (when, k, name)
    return (frame_id, None, "") if best is None else (frame_id, best[2], best[0])


def _choice(result: list, where: str) -> str | None:
    for item in result:
        if not isinstance(item, dict) or item.get("type") != "choices":
            continue
        choices = (item.get("value") or {}).get("choices") or []
        if len(choices) != 1:
            raise ValueError(f"{where}: expected exactly one choice, got {json.dumps(choices)}")
        return str(choices[0])
    return None


def _ground_truth(frames: pa.Table, classes: Sequence[str]) -> np.ndarray:
    """Class index per frame from the `ground_truth` column, -1 where null."""
    index = {name: i for i, name in enumerate(classes)}
    out = np.full(frames.num_rows, -1, dtype=np.int32)
    if "ground_truth" not in frames.column_names:
        return out
    for i, (fid, name) in enumerate(
        zip(
            frames.column("frame_id").to_pylist(),
            frames.column("ground_truth").to_pylist(),
            strict=True,
        )
    ):
        if name is None:
            continue
        if name not in index:
            raise ValueError(
                f"frame {fid}: unknown ground_truth class {name!r}; known: {list(classes)}"
            )
        out[i] = index[name]
    return out


def _run_auto(labeler: AutoLabeler, frames: pa.Table, frame_ids: list[str], rows: np.ndarray,
              n_classes: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    images = frames.column("image").take(pa.array(rows)).to_pylist()
    cls, conf = labeler(images, [frame_ids[i] for i in rows])
    cls, conf = np.asarray(cls), np.asarray(conf, dtype=np.float32)
    if cls.shape != (len(rows),) or conf.shape != (len(rows),):
        raise ValueError(
            f"auto-labeler returned shapes {cls.shape} and {conf.shape} for {len(rows)} frames"
        )
    if len(cls) and (cls.min() < 0 or cls.max() >= n_classes):
        raise ValueError(f"auto-labeler returned class indices outside [0, {n_classes})")
    return cls.astype(np.int32), conf
