"""Label Studio's formats, both ways: import tasks out to annotators, JSON exports back.

One single-choice classification per frame. An import task:
    {"data": {"image": "<url>", "frame_id": "c1/front/3", ...},
     "predictions": [{"model_version": "4", "score": 0.71, "result": [<choice>]}]}
An export is a list of tasks, each with its annotations:
    [{"id": 7, "data": {"frame_id": "c1/front/3", ...},
      "annotations": [{"result": [{"type": "choices", "from_name": "label", "to_name": "image",
                                   "value": {"choices": ["vehicle"]}}],
                       "was_cancelled": false, "created_at": "...", "updated_at": "..."}]}]
The project's labeling config that matches both: `label_config(classes)`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import quoteattr

FROM_NAME, TO_NAME = "label", "image"  # the control and object tag names of label_config


def label_config(classes: Sequence[str]) -> str:
    """The Label Studio labeling config (XML) whose names match the tasks and exports here."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n'
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInLine="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")  # fmt: skip


def choice_result(class_name: str) -> list[dict]:
    """A Label Studio `result` holding one single-choice classification."""
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [class_name]}}]


def import_task(data: dict, prediction: tuple[str, float] | None = None, *, model_version: str | None = None) -> dict:
    """One import task; `prediction` (class name, score) becomes a pre-annotation from `model_version`."""
    task = {"data": dict(data)}
    if prediction is not None:
        name, score = prediction
        task["predictions"] = [{"model_version": str(model_version), "score": float(score),
                                "result": choice_result(str(name))}]  # fmt: skip
    return task


def exported_task(task_id: int, task: dict, class_name: str, *, annotator: str) -> dict:
    """One task as Label Studio's JSON export writes it: data, predictions, and `annotator`'s answer."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "id": task_id,
        "data": task["data"],
        "predictions": task.get("predictions", []),
        "annotations": [{
            "id": task_id, "completed_by": annotator, "was_cancelled": False, "ground_truth": False,
            "created_at": now, "updated_at": now,
            "result": [{"id": f"r{task_id}", "origin": "manual", **r} for r in choice_result(class_name)],
        }],
    }  # fmt: skip


def export_tasks(obj: Any, where: str) -> list:
    """The tasks of one parsed export file (a list of tasks, or one task on its own)."""
    if isinstance(obj, dict) and "data" in obj:
        return [obj]
    if not isinstance(obj, list):
        raise ValueError(f"{where}: a Label Studio JSON export is a list of tasks, got {type(obj).__name__}")
    return obj


def human_labels(exports: Sequence[dict | list], classes: Sequence[str]) -> dict[str, int]:
    """frame_id -> class index from parsed exports; the latest annotation wins (ties: later export).

    An export is `{"source": name, "tasks": [...]}` (what the queue reads back) or a bare task list.
    """
    index = {name: i for i, name in enumerate(classes)}
    chosen: dict[str, tuple[str, int]] = {}  # frame_id -> (annotation time, class index)
    for n, export in enumerate(exports):
        source, tasks = _source_and_tasks(export, n)
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


def _source_and_tasks(export: dict | list, n: int) -> tuple[str, list]:
    if isinstance(export, dict) and "tasks" in export:
        return str(export.get("source", f"export #{n}")), list(export["tasks"])
    return f"export #{n}", export_tasks(export, f"export #{n}")


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
