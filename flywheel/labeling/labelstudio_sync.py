"""The human queue on a real Label Studio server: queued tasks in, finished annotations back out.

The queue files (`labeling/queue/<batch>.json`, flywheel/labeling/queue.py) stay the source of
truth; this module mirrors them into one Label Studio project and mirrors its answers back as
exports under `labeling/done/<batch>.json`, the same files the no-server exchange uses, so the
labels stage reads both the same way. The project asks for what the flywheel's task needs: one class
per frame (classification), or a labelled box around every object (detection).

    push   every queued task not yet in the project is imported, with the champion's guess as a
           pre-annotation; images come from the store (local-files serving for a local store,
           presigned URLs for S3, living `url_lifetime_s` and renewed on unanswered tasks each
           push past half of it)
    pull   a batch's annotations are written as its export once they settle (all its tasks
           answered, or no change for `settle_s`); the export changes only when an answer did,
           so its sha256 names the answers a relabel run folds in; an export names each image as
           queued (the store's key), never by the URL the server was given

Sync is idempotent: tasks are matched by `data.frame_id`, exports are compared before they are
written. The SDK is `label-studio-sdk`; the server is started by flywheel/labeling/labelstudio_server.py
or is any Label Studio a team runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from flywheel import layout
from flywheel.labeling import labelstudio
from flywheel.labeling.queue import read_queue
from flywheel.store import LocalStore, S3Store, Store

PRESIGN_S = 7 * 24 * 3600  # the longest an S3 presigned URL may live (SigV4)
PAGE = 100
# task -> (the project's labeling config, its description, the config's tag holding the classes)
CONFIGS = {
    "classification": (labelstudio.label_config, "Frames the flywheel's champion was unsure of. One class per frame.",
                       "Choices"),
    "detection": (labelstudio.box_label_config,
                  "Frames the flywheel's champion was unsure of. Draw a box around every object.", "RectangleLabels"),
}  # fmt: skip


@dataclass(frozen=True)
class Answered:
    """A batch whose export changed: the relabel run key names the answers it folds in."""

    batch_id: str
    key: str
    tasks: int
    sha256: str


class LabelStudioSync:
    """One Label Studio project mirrored against the store's queue and done files.

    `url` and `api_key` reach the server (a personal access token or, where the organization
    allows it, a legacy token: the SDK takes either). `title` names the project; it is created
    with the flywheel's classes on first use and reused after, provided its classes still match.
    `task`: "classification" (a choice per frame) or "detection" (a labelled rectangle per object).
    """

    def __init__(self, url: str, api_key: str, *, title: str, classes: Sequence[str],
                 settle_s: float = 120.0, document_root: Path | None = None, timeout_s: float = 60.0,
                 url_lifetime_s: int = 24 * 3600, task: str = "classification") -> None:  # fmt: skip
        if not api_key:
            raise ValueError(f"Label Studio at {url}: no access token (set labelstudio.api_key_env's variable)")
        if task not in CONFIGS:
            raise ValueError(f"Label Studio sync: unknown task {task!r}; known: {list(CONFIGS)}")
        self.task = task
        from label_studio_sdk import LabelStudio

        self.url, self.title, self.classes, self.settle_s = url.rstrip("/"), title, list(classes), settle_s
        self.document_root = document_root  # the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; None: local_files_root
        if not 0 < url_lifetime_s <= PRESIGN_S:
            raise ValueError(f"url_lifetime_s must be in (0, {PRESIGN_S}], got {url_lifetime_s}")
        self.url_lifetime_s = url_lifetime_s
        self.client = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout_s)
        self._project: int | None = None

    # -- the project ------------------------------------------------------------------------

    def project_id(self) -> int:
        """The project's id: found by title, else created with the task's labeling config
        (`labelstudio.label_config` or `labelstudio.box_label_config` of the classes)."""
        if self._project is not None:
            return self._project
        config, description, tag = CONFIGS[self.task]
        for p in self.client.projects.list(title=self.title):
            if p.title == self.title:
                found = self.client.projects.get(id=p.id)
                kinds = _tags(found.label_config or "") & {t for _, _, t in CONFIGS.values()}
                if tag not in kinds:
                    raise ValueError(
                        f"Label Studio project {self.title!r} (id {p.id}) at {self.url} is not a {self.task} project "
                        f"(its labeling config has {sorted(kinds) or 'neither Choices nor RectangleLabels'}, not {tag}): "
                        "rename labelstudio.project or set the flywheel's task to the project's"
                    )
                choices = _choices(found.label_config or "")
                if choices != self.classes:
                    what = "choices" if self.task == "classification" else "rectangle labels"
                    raise ValueError(
                        f"Label Studio project {self.title!r} (id {p.id}) at {self.url} has {what} {choices}, "
                        f"the flywheel's classes are {self.classes}: rename labelstudio.project or fix its config"
                    )
                self._project = p.id
                return p.id
        created = self.client.projects.create(
            title=self.title, label_config=config(self.classes), description=description, show_collab_predictions=True,
        )  # fmt: skip
        self._project = created.id
        return created.id

    def connect_local_files(self, store: LocalStore) -> None:
        """Let the project serve the store's queued images (Label Studio's local-files storage).

        The server must run with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT at `document_root` (None: `local_files_root`) or above.
        """
        document_root = self.document_root or local_files_root(store)
        images = store.path / layout.LABELING_IMAGES
        images.mkdir(parents=True, exist_ok=True)
        pid = self.project_id()
        if any(Path(s.path) == images for s in self.client.import_storage.local.list(project=pid)):
            return
        if not images.is_relative_to(document_root):
            raise ValueError(f"the store's images {images} are not under Label Studio's document root {document_root}")
        self.client.import_storage.local.create(
            project=pid, path=str(images), title="flywheel queued frames", use_blob_urls=True,
            regex_filter=r".*\.(jpg|png|webp)$",
        )  # fmt: skip

    # -- push -------------------------------------------------------------------------------

    def push(self, store: Store, *, now: float | None = None) -> dict[str, int]:
        """Import every queued task that is not in the project yet, and renew the presigned image URLs
        of unanswered tasks past half their lifetime; {batch_id: tasks imported}."""
        pid = self.project_id()
        if isinstance(store, LocalStore):
            self.connect_local_files(store)
        tasks = self._tasks(pid)
        present = {t["data"].get("frame_id") for t in tasks}
        imported: dict[str, int] = {}
        queue = read_queue(store)
        for q in queue:
            todo = [t for t in q["tasks"] if t["data"]["frame_id"] not in present]
            if not todo:
                continue
            new = [{**t, "data": {**t["data"], "image": self.image_ref(store, t)}} for t in todo]
            self.client.projects.import_tasks(id=pid, request=new, commit_to_project=True)
            imported[q["batch_id"]] = len(new)
            present |= {t["data"]["frame_id"] for t in todo}
        if isinstance(store, S3Store):
            queued = {t["data"]["frame_id"]: t for q in queue for t in q["tasks"]}
            for task in stale(tasks, self.url_lifetime_s, time.time() if now is None else now):
                fid = task["data"].get("frame_id")
                if fid in queued:
                    data = {**task["data"], "image": self.image_ref(store, queued[fid])}
                    self.client.tasks.update(id=str(task["id"]), data=data)
        return imported

    def image_ref(self, store: Store, task: dict) -> str:
        """How the server reaches a queued task's image: local-files URL, presigned URL, or as queued."""
        ref = str(task["data"].get("image", ""))
        at = ref.find(layout.LABELING_IMAGES)
        if at < 0:
            return ref  # an inline data: URI or a team's own URL
        key = ref[at:]
        if isinstance(store, LocalStore):
            rel = (store.path / key).relative_to(self.document_root or local_files_root(store))
            return f"/data/local-files/?d={rel.as_posix()}"
        if isinstance(store, S3Store):
            return store.client.generate_presigned_url(
                "get_object", Params={"Bucket": store.bucket, "Key": store._k(key)}, ExpiresIn=self.url_lifetime_s
            )
        return ref

    # -- pull -------------------------------------------------------------------------------

    def pull(self, store: Store, *, now: float | None = None) -> list[Answered]:
        """Write the export of each batch whose answers settled and changed; the batches written."""
        pid, now = self.project_id(), time.time() if now is None else now
        by_batch: dict[str, list[dict]] = defaultdict(list)
        queue = read_queue(store)
        queued = {q["batch_id"]: len(q["tasks"]) for q in queue}
        image_of = {t["data"]["frame_id"]: t["data"].get("image") for q in queue for t in q["tasks"]}
        for task in self._tasks(pid):
            if task.get("annotations"):
                by_batch[str(task["data"].get("batch_id"))].append(task)
        written = []
        for batch_id, tasks in sorted(by_batch.items()):
            if batch_id not in queued:
                continue  # a task someone added by hand: not the flywheel's
            newest = max(_when(a) for t in tasks for a in t["annotations"])
            if len(tasks) < queued[batch_id] and now - newest < self.settle_s:
                continue  # a person is still on this batch
            export = [_export_task(t, image_of) for t in sorted(tasks, key=lambda t: t["id"])]
            key = layout.done_key(batch_id)
            if store.exists(key) and store.read_json(key) == export:
                continue
            store.write_json(key, export)
            sha = hashlib.sha256(json.dumps(export, sort_keys=True).encode()).hexdigest()
            written.append(Answered(batch_id=batch_id, key=key, tasks=len(export), sha256=sha))
        return written

    def _tasks(self, pid: int) -> list[dict]:
        """Every task of the project with its annotations, as plain dicts."""
        return [t.model_dump(mode="json") if hasattr(t, "model_dump") else dict(t)
                for t in self.client.tasks.list(project=pid, fields="all", page_size=PAGE)]  # fmt: skip


def unfolded(store: Store, classes: Sequence[str]) -> list[Answered]:
    """Queued batches whose export holds an answer their labels do not (yet) carry as a human label.

    A batch without labels yet is left out: its first labels run reads the answers anyway.
    """
    out = []
    for q in read_queue(store):
        key, labels_key = layout.done_key(q["batch_id"]), layout.labels_key(q["batch_id"])
        if not q["done"] or not store.exists(labels_key):
            continue
        export = store.read_json(key)
        exports = [{"source": key, "tasks": labelstudio.export_tasks(export, key)}]
        boxes = "boxes" in store.parquet_file(labels_key).schema_arrow.names  # task: detection
        answers = (labelstudio.human_boxes if boxes else labelstudio.human_labels)(exports, classes, skipped=[])
        t = store.read_parquet(labels_key, columns=["frame_id", "boxes" if boxes else "label", "label_source"])
        held = {f: (c, src) for f, c, src in zip(*(t.column(n).to_pylist() for n in t.column_names), strict=True)}
        if boxes:  # a box set as held in the labels (names, pixels) against the answer's
            answers = {f: [(classes[c], x, y, w, h) for c, x, y, w, h in b] for f, b in answers.items()}
            held = {f: ([(x["label"], x["x"], x["y"], x["w"], x["h"]) for x in b or []], src) for f, (b, src) in held.items()}
            changed = any(f not in held or held[f][1] != "human" or not _same_boxes(held[f][0], b) for f, b in answers.items())
        else:
            changed = any(held.get(f) != (c, "human") for f, c in answers.items())
        if changed:
            sha = hashlib.sha256(json.dumps(export, sort_keys=True).encode()).hexdigest()
            out.append(Answered(batch_id=q["batch_id"], key=key, tasks=len(answers), sha256=sha))
    return out


def _same_boxes(a: list[tuple], b: list[tuple]) -> bool:
    """Two box sets [(class name, x, y, w, h)] alike to a hundredth of a pixel (labels store float32)."""
    a, b = sorted(a), sorted(b)
    return len(a) == len(b) and all(p[0] == q[0] and max(abs(x - y) for x, y in zip(p[1:], q[1:], strict=True)) < 0.01
                                    for p, q in zip(a, b, strict=True))  # fmt: skip


def local_files_root(store: LocalStore) -> Path:
    """The default document root of Label Studio's local-files serving: the store's queued images and
    nothing else (not the store's folder: it may hold MLflow's database, Dagster's storage, the
    server's own data)."""
    return store.path / layout.LABELING_IMAGES


def trouble(e: Exception, url: str) -> str | None:
    """One line on why Label Studio could not be synced with (down, refusing the token, answering an
    error), or None for an exception that is not about reaching it (a bug: let it raise)."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(e, ApiError):
        if e.status_code in (401, 403):
            return (f"Label Studio at {url} refused the access token (HTTP {e.status_code}): check the variable "
                    "labelstudio.api_key_env names")  # fmt: skip
        return f"Label Studio at {url} answered HTTP {e.status_code}: {str(e.body)[:200]}"
    if isinstance(e, httpx.TimeoutException):
        return f"Label Studio at {url} did not answer in time ({type(e).__name__})"
    if isinstance(e, httpx.HTTPError | OSError):
        return f"Label Studio at {url} cannot be reached ({type(e).__name__}: {str(e)[:200]})"
    return None


def from_settings(settings) -> LabelStudioSync | None:
    """The sync the settings ask for, or None when no Label Studio is configured (the file exchange)."""
    ls = settings.labelstudio
    url = ls.url or os.environ.get("LABEL_STUDIO_URL")
    if not url:
        return None
    title = ls.project or f"flywheel {settings.dataset.name}"
    root = Path(ls.document_root).expanduser().resolve() if ls.document_root else None
    return LabelStudioSync(url, os.environ.get(ls.api_key_env, ""), title=title, classes=settings.classes,
                           settle_s=ls.settle_s, document_root=root, url_lifetime_s=ls.url_lifetime_s,
                           task=getattr(settings, "task", "classification"))  # fmt: skip


def _export_task(task: dict, image_of: dict[str, str]) -> dict:
    """A task as Label Studio's JSON export writes it (what labelstudio.human_labels and human_boxes read),
    its image named as queued (`image_of`: frame_id -> the queue's image), not by the URL the server had.
    Each annotation's result is kept whole: a rectangle needs its original_width/height and rotation."""
    keep = ("id", "result", "was_cancelled", "ground_truth", "created_at", "updated_at", "completed_by")
    data = dict(task["data"])
    if data.get("frame_id") in image_of:
        data["image"] = image_of[data["frame_id"]]
    return {
        "id": task["id"],
        "data": data,
        "annotations": [{k: a.get(k) for k in keep} for a in task["annotations"]],
    }


def expires_at(url: str) -> float | None:
    """When a presigned S3 URL stops working (epoch seconds), from its query (SigV4: X-Amz-Date +
    X-Amz-Expires; SigV2: Expires); None: not a presigned URL."""
    from urllib.parse import parse_qs, urlsplit

    query = {k.lower(): v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    try:
        if "x-amz-date" in query and "x-amz-expires" in query:
            signed = datetime.strptime(query["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            return signed.timestamp() + int(query["x-amz-expires"])
        if "expires" in query and "signature" in query:
            return float(query["expires"])
    except ValueError:
        return None
    return None


def stale(tasks: list[dict], lifetime_s: float, now: float) -> list[dict]:
    """The unanswered tasks whose presigned image URL has less than half `lifetime_s` left."""
    out = []
    for task in tasks:
        end = expires_at(str(task.get("data", {}).get("image", "")))
        if end is not None and not task.get("annotations") and end - now < lifetime_s / 2:
            out.append(task)
    return out


def _when(annotation: dict) -> float:
    stamp = annotation.get("updated_at") or annotation.get("created_at")
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() if stamp else 0.0


def _choices(label_config: str) -> list[str]:
    """The classes of a labeling config, in order: its Choice values, then its RectangleLabels' Label values."""
    root = _xml(label_config)
    return ([c.get("value", "") for c in root.iter("Choice")]
            + [c.get("value", "") for r in root.iter("RectangleLabels") for c in r.iter("Label")])  # fmt: skip


def _tags(label_config: str) -> set[str]:
    """The tag names of a labeling config."""
    return {e.tag for e in _xml(label_config).iter()}


def _xml(label_config: str):
    import xml.etree.ElementTree as ET

    try:
        return ET.fromstring(label_config)
    except ET.ParseError as e:
        raise ValueError(f"the project's labeling config is not XML: {e}") from e
