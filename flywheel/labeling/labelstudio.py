"""Label Studio's formats, both ways: import tasks out to annotators, JSON exports back.

Two kinds of task, one per flywheel task. Classification: one single choice per frame; an import task
    {"data": {"image": "<url>", "frame_id": "c1/front/3", ...},
     "predictions": [{"model_version": "4", "score": 0.71, "result": [<choice>]}]}
Detection: a box around every object; the task's data also carries the frame's `width` and `height`,
and a prediction's result holds one rectangle per box of the champion (`box_result`):
    {"type": "rectanglelabels", "from_name": "label", "to_name": "image",
     "original_width": 640, "original_height": 480, "image_rotation": 0,
     "value": {"x": 12.5, "y": 40.0, "width": 10.0, "height": 7.5, "rotation": 0, "rectanglelabels": ["vehicle"]}}
Label Studio places a rectangle in percent of the image (x, y: its top-left corner); the flywheel's
boxes are pixels of the frame as stored, (x, y, w, h) from the top-left corner.
An export is a list of tasks, each with its annotations:
    [{"id": 7, "data": {"frame_id": "c1/front/3", ...},
      "annotations": [{"result": [{"type": "choices", "from_name": "label", "to_name": "image",
                                   "value": {"choices": ["vehicle"]}}],
                       "was_cancelled": false, "created_at": "...", "updated_at": "..."}]}]
`human_labels` reads a classification export, `human_boxes` a detection one (where a submitted answer
with no rectangle says the frame holds no object). The projects' labeling configs that match them:
`label_config(classes)` and `box_label_config(classes)`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import quoteattr

FROM_NAME, TO_NAME = "label", "image"  # the control and object tag names of label_config and box_label_config
OUTSIDE = 1.0  # percent of the image a rectangle may reach past its edge (a drag a little too far): clipped to it


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
    return _exported(task_id, task, choice_result(class_name), annotator)


def box_label_config(classes: Sequence[str]) -> str:
    """The labeling config (XML) of a detection project: a rectangle per object, one of `classes` each."""
    labels = "\n".join(f"    <Label value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n'
            f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">\n'
            f"{labels}\n  </RectangleLabels>\n</View>\n")  # fmt: skip


def box_result(boxes: Sequence[tuple[str, float, float, float, float]], width: int, height: int) -> list[dict]:
    """Label Studio `rectanglelabels` results for `boxes` (class name, x, y, w, h) in pixels of a `width` x
    `height` frame: Label Studio places them in percent of the image."""
    if width <= 0 or height <= 0:
        raise ValueError(f"a frame of {width} x {height} pixels cannot hold boxes")
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "rectanglelabels", "original_width": int(width),
             "original_height": int(height), "image_rotation": 0,
             "value": {"x": 100 * float(x) / width, "y": 100 * float(y) / height, "width": 100 * float(w) / width,
                       "height": 100 * float(h) / height, "rotation": 0, "rectanglelabels": [str(name)]}}
            for name, x, y, w, h in boxes]  # fmt: skip


def import_box_task(data: dict, boxes: Sequence[tuple[str, float, float, float, float, float]] | None = None, *,
                    width: int, height: int, model_version: str | None = None) -> dict:  # fmt: skip
    """One detection import task of a `width` x `height` frame (its data carries both, for the way back).

    `boxes` (class name, score, x, y, w, h) in pixels, the champion's detections, become one pre-annotation
    from `model_version` scored by their mean score; an empty list is a prediction of no object (score 0),
    None no prediction at all.
    """
    task = {"data": {**data, "width": int(width), "height": int(height)}}
    if boxes is not None:
        boxes = list(boxes)
        result = box_result([(name, x, y, w, h) for name, _, x, y, w, h in boxes], width, height)
        for item, box in zip(result, boxes, strict=True):
            item["score"] = float(box[1])
        score = sum(float(b[1]) for b in boxes) / len(boxes) if boxes else 0.0
        task["predictions"] = [{"model_version": str(model_version), "score": score, "result": result}]
    return task


def exported_box_task(task_id: int, task: dict, boxes: Sequence[tuple[str, float, float, float, float]], *,
                      annotator: str) -> dict:  # fmt: skip
    """A detection task as Label Studio's JSON export writes it, answered by `annotator` with `boxes` (class
    name, x, y, w, h) in pixels of the frame; its size comes from the task's data (`import_box_task`)."""
    data = task["data"]
    if not isinstance(data.get("width"), int) or not isinstance(data.get("height"), int):
        raise ValueError(f"task of {data.get('frame_id')}: no frame width/height in its data (not a detection task)")
    return _exported(task_id, task, box_result(boxes, data["width"], data["height"]), annotator)


def _exported(task_id: int, task: dict, result: list[dict], annotator: str) -> dict:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "id": task_id,
        "data": task["data"],
        "predictions": task.get("predictions", []),
        "annotations": [{
            "id": task_id, "completed_by": annotator, "was_cancelled": False, "ground_truth": False,
            "created_at": now, "updated_at": now,
            "result": [{"id": f"r{task_id}" + (f"-{k}" if k else ""), "origin": "manual", **r}  # a region id each
                       for k, r in enumerate(result)],
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

    def answer(task: Any, where: str) -> tuple[str, int | None, str]:
        frame_id, name, when, _ = _latest(task, where, _choice)  # an empty submission carries no label
        if name is not None and name not in index:
            raise ValueError(f"{where}: unknown class {name!r}; known: {list(classes)}")
        return frame_id, None if name is None else index[name], when

    return _answers(exports, answer, skipped)


def human_boxes(exports: Sequence[dict | list], classes: Sequence[str], *,
                skipped: list[dict] | None = None) -> dict[str, list[tuple[int, float, float, float, float]]]:  # fmt: skip
    """frame_id -> boxes (class index, x, y, w, h) in pixels of the frame, from parsed detection exports.

    Read as `human_labels` reads (same `exports`, `skipped`, latest annotation wins), but a submitted
    answer with no rectangle is a label too: the frame holds no object, []. Rectangles are converted with
    their result's original_width/height, else the task data's width/height. A rectangle of an unknown
    class, of no size, rotated, or past the image's edge by more than OUTSIDE percent makes its task bad;
    one past it by less is clipped to the image. An answer holding choices and no rectangle (a
    classification project's export) is bad too: it must not read as "no object here".
    """
    index = {name: i for i, name in enumerate(classes)}

    def answer(task: Any, where: str) -> tuple[str, list | None, str]:
        frame_id, items, when, at = _latest(task, where, _rectangles)
        if items is None:
            return frame_id, None, when
        return frame_id, [_pixel_box(item, task["data"], index, at) for item in items], when

    return _answers(exports, answer, skipped)


def _answers(exports: Sequence[dict | list], answer: Callable[[Any, str], tuple[str, Any, str]],
             skipped: list[dict] | None) -> dict[str, Any]:  # fmt: skip
    """frame_id -> the answer of its latest annotation over every task of `exports` (ties: the later export).

    `answer(task, where)` reads one task as (frame_id, answer or None: no answer, annotation time) and
    raises a ValueError naming `where` for a bad one: raised, or reported in `skipped` when that is a list.
    """
    chosen: dict[str, tuple[str, Any]] = {}  # frame_id -> (annotation time, answer)
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
                frame_id, value, when = answer(task, where)
            except ValueError as e:
                if skipped is None:
                    raise
                skipped.append({"source": source, "task": task_id, "error": str(e)})
                continue
            if value is None:
                continue
            if frame_id not in chosen or when >= chosen[frame_id][0]:
                chosen[frame_id] = (when, value)
    return {fid: v for fid, (_, v) in chosen.items()}


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


def _latest(task: Any, where: str, read: Callable[[Any, str], Any]) -> tuple[str, Any, str, str]:
    """(frame_id, answer, time, where) of the task's latest non-cancelled annotation in which `read(result,
    where)` finds an answer (not None); answer None: no annotation holds one."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise ValueError(f"{where}: a task needs a 'data' object")
    frame_id = task["data"].get("frame_id")
    if not isinstance(frame_id, str) or not frame_id:
        raise ValueError(f"{where}: task data has no 'frame_id'")
    annotations = task.get("annotations") or []
    if not isinstance(annotations, list):
        raise ValueError(f"{where}: 'annotations' is a {type(annotations).__name__}, not a list")
    best: tuple[str, int, Any, str] | None = None  # (time, order, answer, where)
    for k, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise ValueError(f"{where}: annotation {k} is not an object")
        if ann.get("was_cancelled"):
            continue
        at = f"{where} annotation {ann.get('id', k)}"
        value = read(ann.get("result") or [], at)
        if value is None:
            continue
        when = str(ann.get("updated_at") or ann.get("created_at") or "")
        if best is None or (when, k) >= best[:2]:
            best = (when, k, value, at)
    return (frame_id, None, "", where) if best is None else (frame_id, best[2], best[0], best[3])


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


def _rectangles(result: Any, where: str) -> list[dict]:
    """The `rectanglelabels` items of an annotation's result ([]: a submitted answer of no object)."""
    if not isinstance(result, list):
        raise ValueError(f"{where}: 'result' is a {type(result).__name__}, not a list")
    if not all(isinstance(item, dict) for item in result):
        raise ValueError(f"{where}: 'result' holds an item that is not an object")
    items = [item for item in result if item.get("type") == "rectanglelabels"]
    others = sorted({str(item.get("type")) for item in result} - {"rectanglelabels"})
    if others and not items:  # read as "no object" it would wipe the frame's boxes
        raise ValueError(f"{where}: holds {others} results and no rectangle: not a detection answer "
                         "(an export of a classification project?)")  # fmt: skip
    return items


def _pixel_box(item: dict, data: dict, index: dict[str, int], where: str) -> tuple[int, float, float, float, float]:
    """(class index, x, y, w, h) in pixels of one `rectanglelabels` result, checked and clipped to the image."""
    value = item.get("value")
    if not isinstance(value, dict):
        raise ValueError(f"{where}: a rectangle's 'value' is not an object: {json.dumps(value)}")
    names = value.get("rectanglelabels")
    if not isinstance(names, list) or len(names) != 1:
        raise ValueError(f"{where}: expected exactly one class per rectangle, got {json.dumps(names)}")
    name = str(names[0])
    if name not in index:
        raise ValueError(f"{where}: unknown class {name!r}; known: {list(index)}")
    rotation, turned = value.get("rotation") or 0, item.get("image_rotation") or 0
    if rotation != 0 or turned != 0:
        raise ValueError(f"{where}: a {name} rectangle rotated by {rotation} degrees (image by {turned}): "
                         "boxes are upright")  # fmt: skip
    x, y, w, h = (_number(value.get(k), f"{where}: the {name} rectangle's {k!r}") for k in ("x", "y", "width", "height"))
    width, height = _image_size(item, data, where)
    box = f"the {name} rectangle (x {x:g}, y {y:g}, width {w:g}, height {h:g} % of the image)"
    if w <= 0 or h <= 0:
        raise ValueError(f"{where}: {box} has no size")
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, 100.0), min(y + h, 100.0)  # clipped to the image
    if x < -OUTSIDE or y < -OUTSIDE or x + w > 100 + OUTSIDE or y + h > 100 + OUTSIDE or x1 <= x0 or y1 <= y0:
        raise ValueError(f"{where}: {box} lies outside the image by more than {OUTSIDE:g} %")
    return index[name], x0 * width / 100, y0 * height / 100, (x1 - x0) * width / 100, (y1 - y0) * height / 100


def _image_size(item: dict, data: dict, where: str) -> tuple[float, float]:
    """(width, height) in pixels of the image a rectangle was drawn on: the result's, else the task's."""
    for w, h in ((item.get("original_width"), item.get("original_height")), (data.get("width"), data.get("height"))):
        if w is not None or h is not None:
            w, h = _number(w, f"{where}: image width"), _number(h, f"{where}: image height")
            if w <= 0 or h <= 0:
                raise ValueError(f"{where}: an image of {w:g} x {h:g} pixels")
            return w, h
    raise ValueError(f"{where}: no image size to turn the rectangles into pixels (neither original_width/height "
                     "in the result nor width/height in the task data)")  # fmt: skip


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{what} is not a number: {json.dumps(v)}")
    return float(v)
