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


def parse_export(data: bytes, where: str) -> list:
    """The tasks of one export file's bytes; ValueError naming `where` if it is not JSON or not a task list."""
    try:
        obj = json.loads(data)
    except ValueError as e:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        raise ValueError(f"{where} is not valid JSON: {e}") from e
    return export_tasks(obj, where)


def export_tasks(obj: Any, where: str) -> list:
    """The tasks of one parsed export file (a list of tasks, or one task on its own)."""
    if isinstance(obj, dict) and "data" in obj:
        return [obj]
    if not isinstance(obj, list):
        raise ValueError(f"{where}: a Label Studio JSON export is a list of tasks, got {type(obj).__name__}")
    return obj


def human_labels(exports: Sequence[dict | list], classes: Sequence[str], *,
                 skipped: list[dict] | None = None) -> dict[str, int]:  # fmt: skip
    """frame_id -> class index from parsed exports; the latest annotation wins (ties: later export).

    An export is `{"source": name, "tasks": [...]}` (what the queue reads back; its `error`, if
    set, says why the file gave no tasks) or a bare task list. A bad file or task raises a
    ValueError naming the file and task. With `skipped` (a list), it is left out and reported
    there instead, as `{"source", "task" (None: the whole file), "error"}`, so one bad answer
    does not stop the good ones.
    """
    index = {name: i for i, name in enumerate(classes)}
    chosen: dict[str, tuple[str, int]] = {}  # frame_id -> (annotation time, class index)
    for n, export in enumerate(exports):
        source, tasks, error = _source_and_tasks(export, n)
        if error is not None:
            if skipped is None:
                raise ValueError(error)
            skipped.append({"source": source, "task": None, "error": error})
            continue
        for t, task in enumerate(tasks):
            task_id = task.get("id", t) if isinstance(task, dict) else t
            where = f"{source} task {task_id}"
            try:
                frame_id, name, when = _task_label(task, where)
                if name is not None and name not in index:
                    raise ValueError(f"{where}: unknown class {name!r}; known: {list(classes)}")
            except ValueError as e:
                if skipped is None:
                    raise
                skipped.append({"source": source, "task": task_id, "error": str(e)})
                continue
            if name is None:
                continue
            if frame_id not in chosen or when >= chosen[frame_id][0]:
                chosen[frame_id] = (when, index[name])
    return {fid: c for fid, (_, c) in chosen.items()}


def _source_and_tasks(export: dict | list, n: int) -> tuple[str, list, str | None]:
    """(source, tasks, why the export gave no tasks or None)."""
    if isinstance(export, dict) and "tasks" in export:
        source, tasks = str(export.get("source", f"export #{n}")), export["tasks"]
        if export.get("error"):
            return source, [], str(export["error"])
        if not isinstance(tasks, list):
            return source, [], f"{source}: 'tasks' is a {type(tasks).__name__}, not a list of tasks"
        return source, tasks, None
    try:
        return f"export #{n}", export_tasks(export, f"export #{n}"), None
    except ValueError as e:  # handed back, so human_labels raises or reports it like any bad file
        return f"export #{n}", [], str(e)


def _task_label(task: Any, where: str) -> tuple[str, str | None, str]:
    """(frame_id, class name or None, time) from the task's latest non-cancelled annotation."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise ValueError(f"{where}: a task needs a 'data' object")
    frame_id = task["data"].get("frame_id")
    if not isinstance(frame_id, str) or not frame_id:
        raise ValueError(f"{where}: task data has no 'frame_id'")
    annotations = task.get("annotations") or []
    if not isinstance(annotations, list):
        raise ValueError(f"{where}: 'annotations' is a {type(annotations).__name__}, not a list")
    best: tuple[str, int, str] | None = None  # (time, order, class name)
    for k, ann in enumerate(annotations):
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
    if not isinstance(result, list):
        raise ValueError(f"{where}: 'result' is a {type(result).__name__}, not a list")
    for item in result:
        if not isinstance(item, dict) or item.get("type") != "choices":
            continue
        value = item.get("value") or {}
        if not isinstance(value, dict):
            raise ValueError(
                f"{where}: 'value' is not an object holding 'choices': {json.dumps(value)}"
            )
        choices = value.get("choices") or []
        if not isinstance(choices, list) or len(choices) != 1:
            raise ValueError(f"{where}: expected exactly one choice, got {json.dumps(choices)}")
        return str(choices[0])
    return None
